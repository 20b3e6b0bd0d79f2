#!/usr/bin/env bash
# Checks of the dashboard and alerts against a real gateway, with promtool (Debian package
# `prometheus`). Run from anywhere; CI runs it after the README's test command (.ci/run).
#
#  1. tests/tests/observability.rs drives a gateway with real presses (dispatched, failed over,
#     escalated, acknowledged, duplicated, rejected, cancelled), checks that every metric the
#     dashboard, the alerts and their tests use is in its /metrics scrape, and leaves the scrape
#     and the dashboard's queries (as recording rules) in $YIJIAN_CHECK_OUT;
#  2. promtool lints the scrape, validates every PromQL expression of the dashboard and the
#     alerts, and runs the alerts' unit tests.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null; then
    echo "dashboards/check.sh: promtool not found; install it with: apt-get install prometheus" >&2
    exit 1
fi

out="${YIJIAN_CHECK_OUT:-$(mktemp -d)}"
[ -n "${YIJIAN_CHECK_OUT:-}" ] || trap 'rm -rf "$out"' EXIT
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== scrape a gateway that has handled presses"
YIJIAN_CHECK_OUT="$out" cargo test --release --workspace --test observability -- --test-threads 2 \
    a_scrape_after_real_presses
test -s "$out/scrape.prom" || { echo "no scrape was written to $out" >&2; exit 1; }

echo "== promtool check metrics (lint of the scrape)"
lint="$(promtool check metrics < "$out/scrape.prom" 2>&1)" || { echo "$lint" >&2; exit 1; }
[ -z "$lint" ] || { echo "$lint" >&2; exit 1; }
grep -c '^yijian_' "$out/scrape.prom" | sed 's/^/  samples: /'

echo "== promtool check rules (alerts, and every dashboard query as a recording rule)"
promtool check rules dashboards/alerts.yml "$out/dashboard-queries.rules.yml"

echo "== promtool test rules (alert unit tests)"
promtool test rules dashboards/alerts_test.yml

echo "dashboards/check.sh: all checks passed"
