#!/usr/bin/env bash
# CI smoke load: a few hundred simulated devices press for ~20 s against a freshly started
# release gateway (on free loopback ports); fails on any lost or doubled press.
#
#   bench/smoke.sh [--devices 300] [--rate 50] [--duration 20s]
set -euo pipefail
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
export YIJIAN_BENCH_MQTT="${YIJIAN_BENCH_MQTT:-$(free_port)}"
export YIJIAN_BENCH_HTTP="${YIJIAN_BENCH_HTTP:-$(free_port)}"
export YIJIAN_BENCH_BACKENDS="${YIJIAN_BENCH_BACKENDS:-$(free_port)}"
source "$(dirname "$0")/lib.sh"

DEVICES=300 RATE=50 DURATION=20s
while [[ $# -gt 0 ]]; do
    case "$1" in
        --devices) DEVICES="$2"; shift 2 ;;
        --rate) RATE="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
done

build
DATA="$(mktemp -d /tmp/yijian-smoke.XXXXXX)"
trap 'cleanup; rm -rf "$DATA"' EXIT
start_gateway "$DATA" "$DATA/gateway.log"
log "smoke: $DEVICES devices, $RATE presses/s for $DURATION"
# The sim exits 2 when a press is lost or doubled, 1 on any other failure: either fails CI.
"$SIM_BIN" run --devices "$DEVICES" --rate "$RATE" --duration "$DURATION" --drain 30s \
    --broker "127.0.0.1:$MQTT_PORT" --gateway-http "http://127.0.0.1:$HTTP_PORT" \
    --backends-listen "127.0.0.1:$BACKENDS_PORT" --gateway-data-dir "$DATA" --gateway-pid "$GW_PID" --quiet
stop_gateway
log "smoke passed"
