#!/usr/bin/env bash
# Connection scale: N devices (default 100,000) connect to one fresh release gateway, from as
# many yijian-sim processes as the per-process open-file limit needs (≤ 15,000 devices each),
# then hold their connections and heartbeat for --hold. Prints how many connected, how fast,
# and the gateway's RSS, descriptors and threads. Nothing is pressed: this is about sockets.
#
#   bench/connect-many.sh [--devices 100000] [--per-process 15000] [--connect-rate 2000] [--hold 60s] [--out DIR]
#
# Every socket of the gateway is a file descriptor too: past its own limit (ulimit -n; the
# gateway raises its soft limit to the hard one at start) new connections wait in the accept
# queue until a descriptor frees up, and the devices retry with backoff.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DEVICES=100000 PER=15000 CRATE=2000 HOLD=60s OUT="$ROOT/bench/results/connect-$(date +%Y%m%d-%H%M)"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --devices) DEVICES="$2"; shift 2 ;;
        --per-process) PER="$2"; shift 2 ;;
        --connect-rate) CRATE="$2"; shift 2 ;;
        --hold) HOLD="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
done

build
mkdir -p "$OUT"
DATA="$(mktemp -d /tmp/yijian-connect.XXXXXX)"
SIMS=()
trap 'for p in "${SIMS[@]}"; do kill "$p" 2>/dev/null || true; done; cleanup; rm -rf "$DATA"' EXIT
start_gateway "$DATA" "$OUT/gateway.log"
log "gateway open-files limit: $(awk '/Max open files/ {print $4 " soft, " $5 " hard"}' /proc/$GW_PID/limits)"
log "provisioning $DEVICES devices"
"$GW_BIN" devices add-many --prefix many- --count "$DEVICES" --profile three-button \
    --config "$DATA/gateway.toml" --data-dir "$DATA" > "$DATA/creds.jsonl"
split -l "$PER" -d -a 3 "$DATA/creds.jsonl" "$DATA/creds-"
start_sampler "$GW_PID" "$OUT/gateway.csv" 5

procs=0
for f in "$DATA"/creds-*; do procs=$((procs + 1)); done
log "$DEVICES devices from $procs yijian-sim processes, $CRATE connects/s in all, holding $HOLD"
i=0
for f in "$DATA"/creds-*; do
    n=$(wc -l < "$f")
    # Each process serves (unused) mock backends on its own port: nothing is pressed.
    "$SIM_BIN" run --devices "$n" --credentials "$f" --rate 0 --duration "$HOLD" --drain 1s \
        --connect-rate $(( CRATE / procs )) --broker "127.0.0.1:$MQTT_PORT" \
        --backends-listen "127.0.0.1:$(( BACKENDS_PORT + 1 + i ))" --quiet \
        --json "$OUT/sim-$i.json" > "$OUT/sim-$i.log" 2>&1 &
    SIMS+=($!)
    i=$((i + 1))
done
for p in "${SIMS[@]}"; do wait "$p" || true; done
SIMS=()
stop_sampler

python3 - "$OUT" "$DEVICES" <<'PY' | tee "$OUT/summary.txt"
import csv, glob, json, os, sys
out, want = sys.argv[1], int(sys.argv[2])
connected = attempts_failed = 0; times = []
for f in sorted(glob.glob(os.path.join(out, "sim-*.json"))):
    j = json.load(open(f))
    connected += int(j.get("connected_at_end") or 0); attempts_failed += int(j.get("failed_connect_attempts") or 0)
    if j.get("connect_seconds") is not None: times.append(float(j["connect_seconds"]))
rows = list(csv.DictReader(open(os.path.join(out, "gateway.csv"))))
rss = max(int(r["rss_kib"]) for r in rows) / 1024
fds = max(int(r["fds"]) for r in rows)
thr = max(int(r["threads"]) for r in rows)
print(f"devices asked: {want}; connected at the end: {connected}; failed connect attempts: {attempts_failed}")
if times: print(f"connect time per process: {min(times):.1f}-{max(times):.1f} s")
print(f"gateway peak RSS {rss:.0f} MiB, peak open descriptors {fds}, threads {thr}")
PY
