#!/usr/bin/env python3
"""One device's answer latency, measured with paho-mqtt (a client nobody here wrote).

For each case, N samples: the time from publishing a press (QoS 1) to the feedback that names
it, then the median and p99. Cases:
  new          a device's first press: a new request, answered `received`
  joined       a second press of the same service on the same device (flood control joins it
               to the open request), answered with where that request stands
  retransmit   the same press id again, answered from the journal
  cancel       a long press (the shipped rules' cancel), answered `cancelled`
Each sample of `new` uses a fresh device; `joined`, `retransmit` and `cancel` follow on that
device, so the four are measured on equal terms.

  probe.py --broker 127.0.0.1:21883 --credentials FILE [--samples 40] [--json OUT]

FILE holds one JSON line {"device_id", "secret"} per device (`yijian-gateway devices
add-many` prints them); at least --samples devices are needed.
"""
import argparse
import json
import statistics
import sys
import threading
import time
import uuid

import paho.mqtt.client as mqtt

TIMEOUT_S = 10.0


class Device:
    def __init__(self, host, port, device_id, secret):
        self.id = device_id
        self.waiting = {}  # press id -> (event, [answer])
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id, clean_session=True)
        self.c.username_pw_set(device_id, secret)
        self.c.on_message = self._message
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.connect(host, port, keepalive=30)
        self.c.loop_start()
        self.c.subscribe(f"yijian/v1/devices/{device_id}/feedback", qos=1)
        if not self.subscribed.wait(TIMEOUT_S):
            raise SystemExit(f"{device_id}: no SUBACK within {TIMEOUT_S} s")

    def _message(self, _c, _u, msg):
        try:
            fb = json.loads(msg.payload)
        except ValueError:
            return
        with self.lock:
            w = self.waiting.pop(fb.get("press"), None)
        if w is not None:
            w[1].append((time.perf_counter(), fb))
            w[0].set()

    def press(self, press_id, gesture):
        """Publish a press; return (seconds until its answer, the answer)."""
        done = threading.Event()
        box = []
        with self.lock:
            self.waiting[press_id] = (done, box)
        body = json.dumps({"id": press_id, "button": "main", "gesture": gesture,
                           "at": int(time.time() * 1000)})
        t0 = time.perf_counter()
        self.c.publish(f"yijian/v1/devices/{self.id}/press", body, qos=1)
        if not done.wait(TIMEOUT_S):
            raise SystemExit(f"{self.id}: no answer to {press_id} within {TIMEOUT_S} s")
        t1, fb = box[0]
        return t1 - t0, fb

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--broker", required=True)
    ap.add_argument("--credentials", required=True)
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--json")
    a = ap.parse_args()
    host, port = a.broker.rsplit(":", 1)
    creds = [json.loads(l) for l in open(a.credentials) if l.strip()]
    if len(creds) < a.samples:
        raise SystemExit(f"{len(creds)} devices in {a.credentials}, {a.samples} needed")
    times = {"new": [], "joined": [], "retransmit": [], "cancel": []}
    states = {k: {} for k in times}
    for i, cr in enumerate(creds[: a.samples]):
        d = Device(host, int(port), cr["device_id"], cr["secret"])
        first = f"probe-{uuid.uuid4().hex[:8]}"
        for case, pid, gesture in [
            ("new", first, "single"),
            ("joined", f"probe-{uuid.uuid4().hex[:8]}", "single"),
            ("retransmit", first, "single"),
            ("cancel", f"probe-{uuid.uuid4().hex[:8]}", "long"),
        ]:
            dt, fb = d.press(pid, gesture)
            times[case].append(dt * 1000)
            states[case][fb.get("state")] = states[case].get(fb.get("state"), 0) + 1
        d.close()
        if (i + 1) % 10 == 0:
            print(f"  {i + 1}/{a.samples} devices", file=sys.stderr)
    print(f"answer latency, paho-mqtt {mqtt.__version__ if hasattr(mqtt, '__version__') else ''}, "
          f"{a.samples} samples each (ms):")
    print(f"  {'case':<12}{'median':>9}{'p99':>9}{'max':>9}  answered")
    out = {}
    for case, v in times.items():
        out[case] = {"median_ms": statistics.median(v), "p99_ms": pct(v, 99), "max_ms": max(v),
                     "samples": len(v), "answers": states[case]}
        print(f"  {case:<12}{statistics.median(v):>9.2f}{pct(v, 99):>9.2f}{max(v):>9.2f}  {states[case]}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
