#!/usr/bin/env bash
# The crash test (tests/tests/crash.rs) at a bigger size: DEVICES simulated devices press
# continuously (each every 150-350 ms) while the release gateway is SIGKILLed twice (at 27% and
# 64% of the presses) and restarted on the same data directory. Fails unless every press is
# exactly one request at the mock backends (by Idempotency-Key and by press id), every device
# heard an answer for every press, the journal agrees, and the outbox is empty. Prints what it saw.
#
#   bench/crash.sh [--devices 200] [--presses 20000]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEVICES=200 PRESSES=20000
while [[ $# -gt 0 ]]; do
    case "$1" in
        --devices) DEVICES="$2"; shift 2 ;;
        --presses) PRESSES="$2"; shift 2 ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
done
cd "$ROOT"
# The test runs target/release/yijian-gateway as its child: build it first.
cargo build --release -p yijian-gateway --quiet
YIJIAN_CRASH_DEVICES="$DEVICES" YIJIAN_CRASH_PRESSES="$PRESSES" \
    cargo test --release -p yijian-tests --test crash sigkill_twice -- --nocapture
