#!/usr/bin/env bash
# One device's answer latency for a new press, a press joining an open request, a retransmitted
# press and a cancel, measured with paho-mqtt against a fresh release gateway in its default
# configuration (every service to the desk; flood control joins presses as shipped).
#
#   bench/probe.sh [--samples 40] [--out DIR]
#
# Installs paho-mqtt into bench/.venv on first use (PyPI). Prints median and p99 per case;
# DIR/probe.json keeps them.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SAMPLES=40 OUT="$ROOT/bench/results/probe-$(date +%Y%m%d-%H%M)"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --samples) SAMPLES="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
done

VENV="$ROOT/bench/.venv"
if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import paho.mqtt' 2>/dev/null; then
    log "installing paho-mqtt into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet 'paho-mqtt>=2,<3'
fi
build
mkdir -p "$OUT"
DATA="$(mktemp -d /tmp/yijian-probe.XXXXXX)"
trap 'cleanup; rm -rf "$DATA"' EXIT
for p in "$MQTT_PORT" "$HTTP_PORT"; do
    if port_busy "$p"; then echo "port 127.0.0.1:$p is in use (set YIJIAN_BENCH_MQTT/HTTP)" >&2; exit 1; fi
done
cat > "$DATA/gateway.toml" <<CONF
[mqtt]
listen = "127.0.0.1:$MQTT_PORT"

[http]
listen = "127.0.0.1:$HTTP_PORT"
CONF
"$GW_BIN" --config "$DATA/gateway.toml" --data-dir "$DATA" devices add-many --prefix probe- \
    --count "$SAMPLES" --profile one-button > "$DATA/credentials.jsonl"
"$GW_BIN" --config "$DATA/gateway.toml" --data-dir "$DATA" > "$OUT/gateway.log" 2>&1 &
GW_PID=$!
for _ in $(seq 1 200); do
    curl -fsS "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null 2>&1 && break
    kill -0 "$GW_PID" 2>/dev/null || { echo "the gateway exited; see $OUT/gateway.log" >&2; exit 1; }
    sleep 0.1
done
log "gateway pid $GW_PID ready; $SAMPLES devices, 4 presses each"
"$VENV/bin/python" "$ROOT/bench/probe.py" --broker "127.0.0.1:$MQTT_PORT" \
    --credentials "$DATA/credentials.jsonl" --samples "$SAMPLES" --json "$OUT/probe.json" | tee "$OUT/probe.txt"
log "results in $OUT"
