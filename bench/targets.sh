#!/usr/bin/env bash
# The load targets of issue 3, each against a fresh release gateway:
#   1. 10,000 devices (60 s heartbeats) connect, then 1,000 presses/s for 60 s: connect time,
#      gateway RSS, p99 press → received and press → backend arrival, nothing lost or doubled.
#   2. --max-rate: step the rate up from 1,000/s (1,000 devices, 15 s steps) until p99
#      press → dispatched exceeds 100 ms or a press is lost.
#
#   bench/targets.sh [--only load|maxrate] [--devices 10000] [--rate 1000] [--duration 60s] [--out DIR]
#
# Results: DIR/load.json, DIR/maxrate.json and their logs. Exits non-zero if a press was lost
# or doubled in the load run (a max-rate step that loses presses is a result, not a failure).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ONLY="" DEVICES=10000 RATE=1000 DURATION=60s OUT="$ROOT/bench/results/targets-$(date +%Y%m%d-%H%M)"
MR_DEVICES=1000 MR_START=1000 MR_STEP=15s
while [[ $# -gt 0 ]]; do
    case "$1" in
        --only) ONLY="$2"; shift 2 ;;
        --devices) DEVICES="$2"; shift 2 ;;
        --rate) RATE="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
done

build
mkdir -p "$OUT"
DATA="$(mktemp -d /tmp/yijian-targets.XXXXXX)"
trap 'cleanup; rm -rf "$DATA"' EXIT
sim() {
    "$SIM_BIN" run --broker "127.0.0.1:$MQTT_PORT" --gateway-http "http://127.0.0.1:$HTTP_PORT" \
        --backends-listen "127.0.0.1:$BACKENDS_PORT" --gateway-data-dir "$DATA" --gateway-pid "$GW_PID" "$@"
}
rc=0
if [[ -z "$ONLY" || "$ONLY" == load ]]; then
    start_gateway "$DATA" "$OUT/load-gateway.log"
    log "load: $DEVICES devices, $RATE presses/s for $DURATION"
    sim --devices "$DEVICES" --rate "$RATE" --duration "$DURATION" --heartbeat 60s --quiet \
        --json "$OUT/load.json" | tee "$OUT/load.txt" || rc=$?
    stop_gateway
fi
if [[ -z "$ONLY" || "$ONLY" == maxrate ]]; then
    start_gateway "$DATA" "$OUT/maxrate-gateway.log"
    log "max rate: $MR_DEVICES devices, from $MR_START presses/s in $MR_STEP steps"
    sim --devices "$MR_DEVICES" --rate "$MR_START" --max-rate --step "$MR_STEP" --p99-limit 100ms --quiet \
        --json "$OUT/maxrate.json" 2>&1 | tee "$OUT/maxrate.txt" || true
    stop_gateway
fi
log "results in $OUT"
exit "$rc"
