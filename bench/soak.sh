#!/usr/bin/env bash
# Soak: 10,000 heartbeating devices and 200 presses/s for 30 minutes against a fresh release
# gateway. Samples the gateway's RSS, open file descriptors and threads every 30 s, and fails
# if any press is lost or doubled. Flat means: after warm-up, no steady climb.
#
#   bench/soak.sh [--devices N] [--rate R] [--duration 30m] [--heartbeat 60s] [--every 30] [--out DIR]
#
# Results: DIR/soak.csv (samples), DIR/sim.json (the load report), DIR/summary.txt.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DEVICES=10000 RATE=200 DURATION=30m HEARTBEAT=60s EVERY=30 OUT="$ROOT/bench/results/soak-$(date +%Y%m%d-%H%M)"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --devices) DEVICES="$2"; shift 2 ;;
        --rate) RATE="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --heartbeat) HEARTBEAT="$2"; shift 2 ;;
        --every) EVERY="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
done

build
mkdir -p "$OUT"
DATA="$(mktemp -d /tmp/yijian-soak.XXXXXX)"
trap 'cleanup; rm -rf "$DATA"' EXIT
start_gateway "$DATA" "$OUT/gateway.log"
start_sampler "$GW_PID" "$OUT/soak.csv" "$EVERY"
log "soak: $DEVICES devices, $RATE presses/s for $DURATION, heartbeat $HEARTBEAT; samples every ${EVERY}s in $OUT/soak.csv"

set +e
"$SIM_BIN" run --devices "$DEVICES" --rate "$RATE" --duration "$DURATION" --heartbeat "$HEARTBEAT" \
    --broker "127.0.0.1:$MQTT_PORT" --gateway-http "http://127.0.0.1:$HTTP_PORT" \
    --backends-listen "127.0.0.1:$BACKENDS_PORT" --gateway-data-dir "$DATA" --gateway-pid "$GW_PID" \
    --json "$OUT/sim.json" 2>&1 | tee "$OUT/sim.log" | grep --line-buffered -vE '^\s*$'
SIM_RC=${PIPESTATUS[0]}
set -e
stop_sampler
stop_gateway

python3 - "$OUT/soak.csv" "$SIM_RC" <<'PY' | tee "$OUT/summary.txt"
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if int(r["rss_kib"]) > 0]
rc = int(sys.argv[2])
if len(rows) < 4:
    print("too few samples to judge"); sys.exit(1)
t = [int(r["elapsed_s"]) for r in rows]
rss = [int(r["rss_kib"]) / 1024 for r in rows]
fds = [int(r["fds"]) for r in rows]
# Warm-up: the first fifth of the run (connections, caches, the SQLite page cache).
w = max(1, len(rows) // 5)
def slope(xs, ys):
    n = len(xs); mx = sum(xs) / n; my = sum(ys) / n
    d = sum((x - mx) ** 2 for x in xs)
    return 0.0 if d == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / d
rs = slope(t[w:], rss[w:]) * 60 * 10  # MiB per 10 minutes
fs = slope(t[w:], fds[w:]) * 60 * 10
print(f"samples: {len(rows)} over {t[-1]} s (warm-up: first {t[w]} s)")
print(f"RSS MiB:  after warm-up {rss[w]:.1f}, end {rss[-1]:.1f}, max {max(rss):.1f}; trend after warm-up {rs:+.2f} MiB per 10 min")
# Where the RSS sits (bench/lib.sh's sampler): anonymous (the heap), file-backed, shared (the
# journal's WAL index), SQLite's own heap (part of the anonymous memory), and the heap as
# jemalloc counts it: allocated and not freed (live data) against resident (live data plus free
# pages it keeps).
for col, name in (("rss_anon_kib", "anon"), ("rss_file_kib", "file"), ("rss_shmem_kib", "shmem"), ("sqlite_kib", "SQLite heap"),
                  ("heap_allocated_kib", "allocated"), ("heap_resident_kib", "resident")):
    if col in rows[0]:
        ys = [int(r[col] or 0) / 1024 for r in rows]
        print(f"  {name:>11} MiB: after warm-up {ys[w]:.1f}, end {ys[-1]:.1f}; trend {slope(t[w:], ys[w:]) * 600:+.2f} per 10 min")
print(f"open fds: after warm-up {fds[w]}, end {fds[-1]}, min {min(fds[w:])}, max {max(fds[w:])}; trend {fs:+.2f} per 10 min")
print("load result: " + ("OK, nothing lost or doubled" if rc == 0 else f"yijian-sim exited {rc} (lost/doubled or error)"))
sys.exit(0 if rc == 0 else 1)
PY
