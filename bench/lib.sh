# Shared by the bench/ scripts: build the release binaries, start a fresh gateway on loopback
# ports of our choosing, sample its memory and descriptors, stop it. Source it; don't run it.
#
# Ports: YIJIAN_BENCH_MQTT (default 21883), YIJIAN_BENCH_HTTP (28080) and YIJIAN_BENCH_BACKENDS
# (29100, where yijian-sim serves the mock backends), all on 127.0.0.1. YIJIAN_BENCH_NO_BUILD=1
# skips the build; YIJIAN_BENCH_BIN_DIR takes the binaries from elsewhere (default target/release).

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN_DIR="${YIJIAN_BENCH_BIN_DIR:-$TARGET/release}"
GW_BIN="$BIN_DIR/yijian-gateway"
SIM_BIN="$BIN_DIR/yijian-sim"
MQTT_PORT="${YIJIAN_BENCH_MQTT:-21883}"
HTTP_PORT="${YIJIAN_BENCH_HTTP:-28080}"
BACKENDS_PORT="${YIJIAN_BENCH_BACKENDS:-29100}"
GW_PID=""
SAMPLER_PID=""

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

build() {
    if [[ -z "${YIJIAN_BENCH_NO_BUILD:-}" ]]; then
        log "building release binaries (cargo build --release --workspace)"
        (cd "$ROOT" && cargo build --release --workspace --quiet)
    fi
    [[ -x "$GW_BIN" && -x "$SIM_BIN" ]] || { echo "missing $GW_BIN or $SIM_BIN" >&2; exit 1; }
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# write_config FILE: the example backends config on our ports. Flood joining is off: simulated
# devices press hundreds of times more often than a real resident, and each press must become
# its own request for the integrity check to count it. The per-connection packet limit (10/s
# sustained, for real devices) is lifted too, as bench/compare.sh does: at --max-rate's 5,062/s
# over 1,000 devices each sends ~15 packets/s (presses, heartbeats, acks for its feedback), so
# the shipped limit closed ~2,500 connections a run and the step measured the reconnects
# instead of the gateway.
write_config() {
    sed "s/127.0.0.1:9100/127.0.0.1:$BACKENDS_PORT/" "$ROOT/gateway/config/example-backends.toml" > "$1"
    cat >> "$1" <<CONF

[mqtt]
listen = "127.0.0.1:$MQTT_PORT"

[http]
listen = "127.0.0.1:$HTTP_PORT"

[flood]
attach_window_s = 0
device_messages_per_s = 100000.0
device_burst = 100000
CONF
}

# start_gateway DATA_DIR LOG: a fresh gateway; sets GW_PID and waits until /readyz answers 200.
start_gateway() {
    local dir="$1" logf="$2"
    for p in "$MQTT_PORT" "$HTTP_PORT" "$BACKENDS_PORT"; do
        if port_busy "$p"; then echo "port 127.0.0.1:$p is in use (set YIJIAN_BENCH_MQTT/HTTP/BACKENDS)" >&2; exit 1; fi
    done
    rm -rf "$dir"; mkdir -p "$dir"
    write_config "$dir/gateway.toml"
    "$GW_BIN" --config "$dir/gateway.toml" --data-dir "$dir" >"$logf" 2>&1 &
    GW_PID=$!
    for _ in $(seq 1 200); do
        if curl -fsS "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null 2>&1; then
            log "gateway pid $GW_PID ready (mqtt :$MQTT_PORT, http :$HTTP_PORT, data $dir)"
            return 0
        fi
        kill -0 "$GW_PID" 2>/dev/null || { echo "the gateway exited; see $logf" >&2; tail -5 "$logf" >&2; exit 1; }
        sleep 0.1
    done
    echo "the gateway did not become ready in 20 s; see $logf" >&2
    exit 1
}

stop_gateway() {
    if [[ -n "$GW_PID" ]] && kill -0 "$GW_PID" 2>/dev/null; then
        kill -TERM "$GW_PID"
        wait "$GW_PID" 2>/dev/null || true
    fi
    GW_PID=""
}

# start_sampler PID CSV SECONDS: every SECONDS append elapsed_s,rss_kib,fds,threads, then RSS
# split into anonymous, file-backed and shared memory (/proc/PID/status), the heap SQLite holds
# and the heap allocated and resident by the allocator's count (the gateway's
# yijian_store_memory_bytes, yijian_heap_allocated_bytes, yijian_heap_resident_bytes; 0 when
# /metrics does not answer), all KiB.
start_sampler() {
    local pid="$1" csv="$2" every="$3"
    echo "elapsed_s,rss_kib,fds,threads,rss_anon_kib,rss_file_kib,rss_shmem_kib,sqlite_kib,heap_allocated_kib,heap_resident_kib" > "$csv"
    (
        t0=$(date +%s)
        while kill -0 "$pid" 2>/dev/null; do
            read -r rss thr anon file shmem < <(awk '/^VmRSS:/ {r=$2} /^Threads:/ {t=$2} /^RssAnon:/ {a=$2}
                /^RssFile:/ {f=$2} /^RssShmem:/ {s=$2} END {print r+0, t+0, a+0, f+0, s+0}' "/proc/$pid/status" 2>/dev/null)
            fds=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)
            read -r sqlite heap_alloc heap_res < <(curl -fsS --max-time 5 "http://127.0.0.1:$HTTP_PORT/metrics" 2>/dev/null |
                awk '/^yijian_store_memory_bytes / {q=$2} /^yijian_heap_allocated_bytes / {a=$2}
                    /^yijian_heap_resident_bytes / {r=$2} END {printf "%d %d %d\n", q / 1024, a / 1024, r / 1024}')
            echo "$(( $(date +%s) - t0 )),${rss:-0},$fds,${thr:-0},${anon:-0},${file:-0},${shmem:-0},${sqlite:-0},${heap_alloc:-0},${heap_res:-0}" >> "$csv"
            sleep "$every"
        done
    ) &
    SAMPLER_PID=$!
}

stop_sampler() {
    [[ -n "$SAMPLER_PID" ]] && kill "$SAMPLER_PID" 2>/dev/null
    wait "$SAMPLER_PID" 2>/dev/null || true
    SAMPLER_PID=""
}

cleanup() {
    stop_sampler
    stop_gateway
}
