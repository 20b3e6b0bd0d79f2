#!/usr/bin/env bash
# Yijian against the stack an integrator would otherwise build: Mosquitto (Debian package) +
# Node-RED 4 with a flow that routes presses to the dispatch backends (issue 3, item 5).
#
# The SAME simulated devices (`yijian-sim run`: real MQTT connections, persistent sessions,
# retransmitting every 5 s until answered, 60 s heartbeats) and the SAME mock backends (served
# by the sim at --backends-listen; they count unique requests by Idempotency-Key and answer a
# repeated key 409) run against
#   (a) Yijian: the release gateway, a fresh data dir per run, rescue/taxi/hospital routed to
#       the mock backends (then to `desk`, the built-in operator queue, as shipped);
#   (b) the peer: Mosquitto + Node-RED 4 running bench/peer/flows.json.
# Each system is started afresh for every run, so peak RSS is per run. The sim measures, per
# press, press → `received` and press → `dispatched` (device side) and press → arrival at the
# mock backend (backend side), CPU seconds and peak RSS of the system under test (for the peer
# Mosquitto's and Node-RED's processes summed), and the integrity check: presses without a
# final answer (lost) and presses that became two requests (doubled). It exits 2 when a press
# is lost or doubled: this script records that and goes on.
#
# What each side guarantees (printed with the results too):
#   Yijian journals every press in SQLite (WAL, synchronous=FULL, group commit: fsync'd)
#   before it answers `received`; a retransmitted press gets the same request; the outbox is
#   replayed after a crash; failed backends are retried, failed over, and escalated to a human
#   (`desk`) at the service deadline.
#   The peer: Mosquitto PUBACKs a press once it is in memory (persistence off: its persistence
#   is a periodic snapshot, never a per-message fsync); Node-RED's MQTT client PUBACKs it on
#   arrival, before the flow runs, and the flow answers `received` with the press only in
#   Node-RED's memory. Since a device stops retransmitting once it hears `received`, a crash of
#   Node-RED between `received` and the backend's 2xx loses that press. Backend retries (8
#   attempts, jittered backoff) live in memory; nothing escalates to a human. No press is
#   booked twice only because the Idempotency-Key is derived from device id + press id and the
#   backend honours it.
#
# Usage: bench/compare.sh [--quick] [options]      (bench/compare.sh --help)
# Needs: Debian (apt-get for mosquitto), Node.js >= 18 with npm (Node-RED 4), cargo (to build
# the release binaries). Everything runs on 127.0.0.1 only. On a host with systemd, installing
# the Debian package also starts a system Mosquitto on port 1883: the benchmark uses its own
# instance on --mqtt-port (18830) and leaves that one alone.
set -uo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
invocation="bench/compare.sh $*"
repo="$(cd "$here/.." && pwd)"
peer_dir="$here/peer"

# ---- options -----------------------------------------------------------------------------------
devices=1000
duration=30s
rates="200,1000,5000"
drain=30s
max_rate=1          # also run `yijian-sim run --max-rate` against each system
max_start=1000      # the first step of --max-rate (then ×1.5, then bisect)
step=20s            # length of each --max-rate step
p99_limit=100ms     # --max-rate's criterion for press → dispatched (and: nothing lost)
max_fresh=0         # search the maximum here, one freshly started system per step
systems="yijian,peer"
out_dir="$here/results"
work_root="$here/out"   # git-ignored: data dirs, generated configs, logs
mqtt_port=18830
backends_port=19100
http_port=18088
nodered_port=18880   # the first Node-RED instance's; the next ones count up
peer_instances=1    # Node-RED instances sharing the presses (MQTT shared subscription)
yijian_log=""       # RUST_LOG for the gateway; empty = the shipped default (info)
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
gateway_bin=""
sim_bin=""

usage() {
    cat <<EOF
Usage: bench/compare.sh [--quick] [options]

Runs the same simulated devices and mock backends against Yijian and against Mosquitto +
Node-RED 4, at equal offered load and at each system's maximum, and writes a markdown table
to stdout and to $out_dir/compare-DATE.md (the sim's JSON reports beside it).

  --quick               a 1-2 minute sanity run, not a measurement: 100 devices, rates
                        200,1000 for 4 s each, the maximum from 500/s in 2 s steps, 5 s drain
                        (options after --quick override these)
  --devices N           simulated devices (default $devices)
  --duration D          pressing time per offered rate, e.g. 30s (default $duration)
  --rates LIST          offered presses/s, comma-separated (default $rates)
  --drain D             wait for outstanding answers after pressing stops (default $drain)
  --no-max              skip the --max-rate runs
  --max-start R         first rate of --max-rate (default $max_start)
  --step D              length of each --max-rate step (default $step)
  --p99-limit D         --max-rate's limit on p99 press → dispatched (default $p99_limit)
  --max-fresh           search the maximum in this script instead of the sim's --max-rate,
                        with the same steps (×1.5, then bisect) and criterion, but each step
                        against a freshly started system: a system that collapsed at one rate
                        (a backlog, retransmission storms, retries in memory) does not drag
                        its collapse into the next, lower step
  --systems LIST        yijian,peer (default both)
  --peer-instances N    Node-RED instances sharing the presses through an MQTT shared
                        subscription (\$share/peer/...): Node-RED runs JavaScript on one
                        thread, Yijian uses every core (default $peer_instances)
  --out DIR             where results go (default bench/results)
  --yijian-log FILTER   RUST_LOG for the gateway (default: its shipped default, info: one
                        line per request; the peer logs warnings only)
  --gateway-bin PATH    yijian-gateway to use (default: TARGET/release, brought up to date
                        with cargo build --release; TARGET is \$CARGO_TARGET_DIR or target/)
  --sim-bin PATH        yijian-sim to use (likewise)
  --mqtt-port P --backends-port P --http-port P --nodered-port P   loopback ports
                        (defaults $mqtt_port, $backends_port, $http_port, $nodered_port)
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) devices=100; duration=4s; rates="200,1000"; drain=5s; step=2s; max_start=500; shift ;;
        --devices) devices="$2"; shift 2 ;;
        --duration) duration="$2"; shift 2 ;;
        --rates) rates="$2"; shift 2 ;;
        --drain) drain="$2"; shift 2 ;;
        --no-max) max_rate=0; shift ;;
        --max-start) max_start="$2"; shift 2 ;;
        --step) step="$2"; shift 2 ;;
        --p99-limit) p99_limit="$2"; shift 2 ;;
        --max-fresh) max_fresh=1; shift ;;
        --systems) systems="$2"; shift 2 ;;
        --out) out_dir="$2"; shift 2 ;;
        --yijian-log) yijian_log="$2"; shift 2 ;;
        --gateway-bin) gateway_bin="$2"; shift 2 ;;
        --sim-bin) sim_bin="$2"; shift 2 ;;
        --mqtt-port) mqtt_port="$2"; shift 2 ;;
        --backends-port) backends_port="$2"; shift 2 ;;
        --http-port) http_port="$2"; shift 2 ;;
        --nodered-port) nodered_port="$2"; shift 2 ;;
        --peer-instances) peer_instances="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "compare.sh: unknown option $1 (see --help)" >&2; exit 64 ;;
    esac
done

say() { echo "[compare $(date +%H:%M:%S)] $*" >&2; }
die() { echo "compare.sh: $*" >&2; exit 1; }

# Seconds of a duration like 30s, 2m, 500ms (for timeouts only).
secs() {
    case "$1" in
        *ms) echo 1 ;;
        *m) echo $(( ${1%m} * 60 )) ;;
        *s) echo "${1%s}" | cut -d. -f1 ;;
        *) echo "$1" | cut -d. -f1 ;;
    esac
}

want() { case ",$systems," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# ---- what is needed: install or build it when missing ------------------------------------------
need_node() {
    command -v node >/dev/null && command -v npm >/dev/null || die "Node.js >= 18 with npm is needed (Debian: apt-get install nodejs npm)"
    local major
    major="$(node -p 'process.versions.node.split(".")[0]')"
    [ "$major" -ge 18 ] || die "Node-RED 4 needs Node.js >= 18; this is $(node --version)"
}

prepare() {
    need_node   # the report is written with node too
    # Unless told which binaries to use, the release build of this tree: cargo brings it up to
    # date (a no-op when it is) so the numbers are of the code in front of you.
    if [ -z "$gateway_bin" ] || [ -z "$sim_bin" ]; then
        if command -v cargo >/dev/null; then
            say "building the release binaries (cargo build --release; nothing to do when they are current)"
            (cd "$repo" && CARGO_TARGET_DIR="$target_dir" cargo build --release --quiet -p yijian-gateway -p yijian-device-sim) \
                || die "cargo build failed"
        fi
        [ -n "$gateway_bin" ] || gateway_bin="$target_dir/release/yijian-gateway"
        [ -n "$sim_bin" ] || sim_bin="$target_dir/release/yijian-sim"
    fi
    [ -x "$gateway_bin" ] && [ -x "$sim_bin" ] || die "no $gateway_bin or $sim_bin: install Rust (cargo) or pass --gateway-bin/--sim-bin"
    # The peer's processes are measured together: the sim must take several --gateway-pid
    # (its help says "Give several" since it does).
    "$sim_bin" run --help | grep -q -- "Give several" || die "$sim_bin is too old to measure several processes (--gateway-pid a,b); rebuild it"
    if want peer; then
        # mosquitto_passwd is in the mosquitto package; mosquitto_pub/sub (the readiness probe)
        # in mosquitto-clients.
        if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ] || ! command -v mosquitto_pub >/dev/null; then
            say "installing Mosquitto from Debian (apt-get install mosquitto mosquitto-clients)"
            command -v apt-get >/dev/null || die "mosquitto is missing and there is no apt-get: install Mosquitto 2.x"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients >/dev/null \
                || die "apt-get install mosquitto failed (run as root)"
        fi
        mosquitto_bin="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
        if [ ! -f "$peer_dir/node_modules/node-red/red.js" ]; then
            say "installing Node-RED 4 into bench/peer/node_modules (npm ci)"
            (cd "$peer_dir" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci in bench/peer failed"
        fi
    fi
}

# ---- processes this script started (and only those) are stopped on exit -----------------------
started_pids=()
cleanup_dirs=()
stop_pid() {  # stop_pid PID [seconds]: TERM, wait, then KILL; then forget the PID
    local pid="$1" wait_s="${2:-15}" i q keep=()
    for q in "${started_pids[@]}"; do [ "$q" = "$pid" ] || keep+=("$q"); done
    started_pids=("${keep[@]}")   # never signal a PID the system may have handed on
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < wait_s * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}
cleanup() {
    local p
    for p in "${started_pids[@]}"; do stop_pid "$p" 5; done
    for p in "${cleanup_dirs[@]}"; do rm -rf "$p"; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {  # wait_port PORT PID SECONDS
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        port_busy "$1" && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}
check_ports() {
    local p
    for p in "$@"; do
        port_busy "$p" && die "port $p on 127.0.0.1 is in use: stop what uses it or choose other ports (--help)"
    done
    return 0
}

# ---- one sim run -------------------------------------------------------------------------------
manifest=""
# run_sim SYSTEM KIND OFFERED WORK PIDS [sim args...]: records one line in the manifest.
run_sim() {
    local system="$1" kind="$2" offered="$3" work="$4" pids="$5"
    shift 5
    local json="$res_dir/$system-$kind-$offered.json" rc limit
    if [ "$kind" = max ]; then   # the sim's own --max-rate: many steps in one run
        limit=$(( 25 * ($(secs "$step") + $(secs "$drain")) + 180 ))
    elif [ "$kind" = maxstep ]; then
        limit=$(( $(secs "$step") + $(secs "$drain") + 180 ))
    else
        limit=$(( $(secs "$duration") + $(secs "$drain") + 180 ))
    fi
    say "$system: yijian-sim run ($kind, $offered presses/s) → $(basename "$json")"
    timeout "$limit" "$sim_bin" run --devices "$devices" --credentials "$work/credentials.jsonl" \
        --broker "127.0.0.1:$mqtt_port" --backends-listen "127.0.0.1:$backends_port" \
        --drain "$drain" --gateway-pid "$pids" --json "$json" "$@" \
        >"$work/sim.out" 2>"$work/sim.err"
    rc=$?
    case $rc in
        0) say "$system: nothing lost, nothing doubled" ;;
        2) say "$system: presses LOST or DOUBLED (sim exit 2): recorded" ;;
        124) say "$system: the sim did not finish within ${limit}s: recorded as an error" ;;
        *) say "$system: the sim failed (exit $rc): $(tail -n 2 "$work/sim.err" | tr '\n' ' ')" ;;
    esac
    cp "$work/sim.out" "$res_dir/$system-$kind-$offered.txt" 2>/dev/null
    printf '{"system":"%s","kind":"%s","offered":%s,"json":"%s","rc":%d}\n' \
        "$system" "$kind" "$offered" "$(basename "$json")" "$rc" >>"$manifest"
}

# ---- (a) Yijian --------------------------------------------------------------------------------
yijian_config() {  # the gateway's configuration for the benchmark
    cat <<EOF
# Written by bench/compare.sh. Routes rescue/taxi/hospital to the sim's mock backends (as
# gateway/config/example-backends.toml does), then to desk, the built-in operator queue.
[mqtt]
listen = "127.0.0.1:$mqtt_port"
[http]
listen = "127.0.0.1:$http_port"
[rules]
dir = "$repo/rules"
[flood]
# Simulated devices press far more often than real ones: with the shipped 30-minute window a
# second press of the same service would join the open request ("pressed again") instead of
# becoming a request of its own, and the peer flow has no such rule.
attach_window_s = 0
# The shipped per-connection limit (10 packets/s sustained) is for real devices; at 5,000
# presses/s over 1,000 devices each sends 5/s plus retransmits, and --max-rate goes further.
# Mosquitto has no such limit by default, so it is lifted here.
device_messages_per_s = 100000.0
device_burst = 100000
[services.rescue]
backends = ["rescue-centre", "desk"]
attempt_timeout_ms = 2000
deadline_s = 20
[services.taxi]
backends = ["taxi-platform", "desk"]
attempt_timeout_ms = 3000
deadline_s = 120
[services.hospital]
backends = ["health-cloud", "desk"]
attempt_timeout_ms = 3000
deadline_s = 300
[backends.rescue-centre]
url = "http://127.0.0.1:$backends_port/rescue"
[backends.taxi-platform]
url = "http://127.0.0.1:$backends_port/taxi"
[backends.health-cloud]
url = "http://127.0.0.1:$backends_port/hospital"
EOF
}

run_yijian() {  # run_yijian KIND OFFERED [sim args...]
    local kind="$1" offered="$2"
    shift 2
    local work="$work_dir/yijian-$kind-$offered" gw
    mkdir -p "$work"
    yijian_config >"$work/yijian.toml"
    "$gateway_bin" config check "$work/yijian.toml" >/dev/null 2>"$work/config-check.err" \
        || { say "yijian: config check failed: $(cat "$work/config-check.err")"; }
    check_ports "$mqtt_port" "$http_port" "$backends_port"
    # Provision the devices into the fresh journal (the sim would call the same command).
    "$gateway_bin" --config "$work/yijian.toml" --data-dir "$work/data" devices add-many \
        --prefix bench- --count "$devices" --profile three-button >"$work/credentials.jsonl" 2>"$work/provision.err" \
        || die "provisioning failed: $(cat "$work/provision.err")"
    # The shipped log filter unless --yijian-log says otherwise (never one from the caller's
    # environment: the report states which was used).
    local log_env=(-u RUST_LOG)
    [ -n "$yijian_log" ] && log_env=("RUST_LOG=$yijian_log")
    env "${log_env[@]}" "$gateway_bin" --config "$work/yijian.toml" --data-dir "$work/data" serve >"$work/gateway.log" 2>&1 &
    gw=$!
    started_pids+=("$gw")
    wait_port "$mqtt_port" "$gw" 30 || { say "yijian: the gateway did not start: $(tail -n 3 "$work/gateway.log")"; stop_pid "$gw"; return; }
    run_sim yijian "$kind" "$offered" "$work" "$gw" --gateway-http "http://127.0.0.1:$http_port" "$@"
    stop_pid "$gw" 20
}

# ---- (b) Mosquitto + Node-RED ------------------------------------------------------------------
peer_probe_id="bench-probe"
run_peer() {  # run_peer KIND OFFERED [sim args...]
    local kind="$1" offered="$2"
    shift 2
    local work="$work_dir/peer-$kind-$offered" mq nr n pids=() nr_ports=()
    mkdir -p "$work"
    for ((n = 1; n <= peer_instances; n++)); do nr_ports+=($((nodered_port + n - 1))); done
    check_ports "$mqtt_port" "${nr_ports[@]}" "$backends_port"
    # The same kind of credentials the sim uses against Yijian (the gateway's own generator:
    # random 128-bit secrets), one more device for the readiness probe, one account for
    # Node-RED; turned into a Mosquitto password file (salted PBKDF2-SHA512) by
    # `mosquitto_passwd -U`. Anonymous clients are refused (mosquitto.conf).
    "$gateway_bin" --data-dir "$work/throwaway" devices add-many --prefix bench- --count "$devices" \
        --profile three-button >"$work/credentials.jsonl" 2>"$work/provision.err" \
        || die "generating credentials failed: $(cat "$work/provision.err")"
    rm -rf "$work/throwaway"
    local probe_secret nodered_secret
    probe_secret="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    nodered_secret="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    node -e '
        const fs = require("fs");
        const lines = fs.readFileSync(process.argv[1], "utf8").split("\n").filter(Boolean)
            .map(l => JSON.parse(l)).map(c => c.device_id + ":" + c.secret);
        lines.push(process.argv[2] + ":" + process.argv[3], "nodered:" + process.argv[4]);
        fs.writeFileSync(process.argv[5], lines.join("\n") + "\n", { mode: 0o600 });
    ' "$work/credentials.jsonl" "$peer_probe_id" "$probe_secret" "$nodered_secret" "$work/passwd"
    mosquitto_passwd -U "$work/passwd" || die "mosquitto_passwd -U failed"
    # Started as root, Mosquitto drops to its own user before it reads the password and ACL
    # files: give them to that user in a directory it can reach. It logs to stderr (a file here).
    local mq_files="$work"
    if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
        mq_files="$(mktemp -d /tmp/yijian-peer-mosquitto.XXXXXX)"
        cleanup_dirs+=("$mq_files")
        mv "$work/passwd" "$mq_files/passwd"
        cp "$peer_dir/mosquitto.acl" "$mq_files/mosquitto.acl"
        chown -R mosquitto "$mq_files"
    else
        cp "$peer_dir/mosquitto.acl" "$mq_files/mosquitto.acl"
    fi
    { cat "$peer_dir/mosquitto.conf"
      echo "listener $mqtt_port 127.0.0.1"
      echo "password_file $mq_files/passwd"
      echo "acl_file $mq_files/mosquitto.acl"
      echo "log_dest stderr"
      echo "# Subscriptions are logged so that compare.sh sees every Node-RED instance subscribe"
      echo "# (once, before the devices connect and subscribe; nothing while they press)."
      echo "log_type subscribe"
    } >"$work/mosquitto.conf"
    "$mosquitto_bin" -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
    mq=$!
    started_pids+=("$mq")
    wait_port "$mqtt_port" "$mq" 15 || { say "peer: mosquitto did not start: $(tail -n 3 "$work/mosquitto.log")"; stop_pid "$mq"; return; }

    # Node-RED runs JavaScript on one thread. With --peer-instances N > 1, N instances share
    # the presses through an MQTT shared subscription (Mosquitto hands each to one of them).
    local topic="yijian/v1/devices/+/press"
    [ "$peer_instances" -gt 1 ] && topic="\$share/peer/$topic"
    for ((n = 1; n <= peer_instances; n++)); do
        mkdir -p "$work/nodered-$n"
        cp "$peer_dir/flows.json" "$work/nodered-$n/flows.json"
        # credentialSecret is false in settings.js: Node-RED reads this file as plain JSON.
        printf '{"yj-broker":{"user":"nodered","password":"%s"}}\n' "$nodered_secret" >"$work/nodered-$n/flows_cred.json"
        PEER_MQTT_PORT="$mqtt_port" PEER_NODERED_PORT="${nr_ports[n - 1]}" PEER_BACKENDS="http://127.0.0.1:$backends_port" \
            PEER_CLIENT_ID="nodered-peer-$n" PEER_PRESS_TOPIC="$topic" \
            node "$peer_dir/node_modules/node-red/red.js" --userDir "$work/nodered-$n" --settings "$peer_dir/settings.js" \
            --no-telemetry "$work/nodered-$n/flows.json" >"$work/nodered-$n.log" 2>&1 &
        nr=$!
        started_pids+=("$nr")
        pids+=("$nr")
    done
    stop_peer() {
        local q
        for q in "${pids[@]}"; do stop_pid "$q" 20; done
        stop_pid "$mq" 10
    }
    # Ready when every instance has subscribed (Mosquitto's log) ...
    local i
    for ((i = 0; i < 180; i++)); do
        [ "$(grep -c ' nodered-peer-[0-9]* 1 .*yijian/v1/devices/+/press' "$work/mosquitto.log")" -ge "$peer_instances" ] && break
        sleep 0.5
    done
    # ... and the flow answers: an invalid press from the probe device comes back `rejected`
    # (invalid, so it makes no backend request and leaves the backends' counts alone).
    local ready=0 sub
    mosquitto_sub -h 127.0.0.1 -p "$mqtt_port" -u "$peer_probe_id" -P "$probe_secret" -q 1 -C 1 -W 90 \
        -t "yijian/v1/devices/$peer_probe_id/feedback" >"$work/probe.out" 2>&1 &
    sub=$!
    for ((i = 0; i < 180; i++)); do
        sleep 0.5
        for nr in "${pids[@]}"; do kill -0 "$nr" 2>/dev/null || break 2; done
        if ! kill -0 "$sub" 2>/dev/null; then ready=1; break; fi
        mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -u "$peer_probe_id" -P "$probe_secret" -q 1 \
            -t "yijian/v1/devices/$peer_probe_id/press" -m '{"id":"probe","button":"main","gesture":"probe","at":0}' 2>/dev/null
    done
    kill "$sub" 2>/dev/null; wait "$sub" 2>/dev/null
    if [ "$ready" != 1 ] || ! grep -q rejected "$work/probe.out"; then
        say "peer: Node-RED's flow did not answer: $(tail -n 5 "$work"/nodered-*.log | tr '\n' ' ')"
        stop_peer; return
    fi
    run_sim peer "$kind" "$offered" "$work" "$(IFS=,; echo "${pids[*]},$mq")" "$@"
    stop_peer
}

# ---- the whole comparison ----------------------------------------------------------------------
prepare
stamp="$(date +%Y%m%d-%H%M%S)"
res_dir="$out_dir/compare-$stamp"
work_dir="$work_root/compare-$stamp"
mkdir -p "$res_dir" "$work_dir" || die "cannot create $res_dir"
manifest="$res_dir/manifest.jsonl"
: >"$manifest"

load="$(cut -d' ' -f1 /proc/loadavg)"
say "load average before the run: $load (the numbers mean most on an idle machine)"
{
    printf '{"date":"%s","devices":%s,"duration":"%s","drain":"%s","rates":"%s","max_start":%s,"step":"%s","p99_limit":"%s","max_mode":"%s",' \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$devices" "$duration" "$drain" "$rates" "$max_start" "$step" "$p99_limit" \
        "$([ "$max_rate" = 0 ] && echo none || { [ "$max_fresh" = 1 ] && echo fresh || echo sim; })"
    printf '"cpu":"%s","cores":%s,"mem_gib":%s,"load_before":"%s",' \
        "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//; s/"//g')" "$(nproc)" \
        "$(awk '/MemTotal/ {printf "%.0f", $2/1048576}' /proc/meminfo)" "$load"
    printf '"yijian":"%s","yijian_log":"%s","peer_instances":%s,"mosquitto":"%s","node_red":"%s","node":"%s","command":"%s"}\n' \
        "$("$gateway_bin" --version 2>/dev/null)" "${yijian_log:-default (info)}" "$peer_instances" \
        "$( (want peer && "$mosquitto_bin" -h 2>/dev/null | head -n 1) || true)" \
        "$( (want peer && node -p 'require(process.argv[1]).version' "$peer_dir/node_modules/node-red/package.json") || true)" \
        "$(node --version)" "$invocation"
} >"$res_dir/run.json"

IFS=',' read -r -a rate_list <<<"$rates"
for r in "${rate_list[@]}"; do
    want yijian && run_yijian rate "$r" --rate "$r" --duration "$duration" --quiet
    want peer && run_peer rate "$r" --rate "$r" --duration "$duration" --quiet
done
# The maximum searched step by step, each step against a fresh system (--max-fresh): the sim's
# --max-rate rule (×1.5 while a step holds, then bisect down to a 12% gap; halve while none
# has held) and criterion (nothing lost, p99 press → dispatched within the limit).
fresh_max() {  # fresh_max SYSTEM
    local system="$1" rate="$max_start" good="" bad="" held
    while :; do
        "run_$system" maxstep "$rate" --rate "$rate" --duration "$step" --quiet
        held="$(node -e '
            const [file, limit] = process.argv.slice(1);
            let r; try { r = JSON.parse(require("fs").readFileSync(file, "utf8")); } catch (e) { console.log(0); process.exit(); }
            const s = r.steps[0];
            console.log(s.lost === 0 && s.press_to_dispatched.p99_ms <= Number(limit) ? 1 : 0);
        ' "$res_dir/$system-maxstep-$rate.json" "$p99_limit_ms")"
        say "$system: $rate presses/s $([ "$held" = 1 ] && echo held || echo "did not hold")"
        if [ "$held" = 1 ]; then good="$rate"; else bad="$rate"; fi
        if [ -n "$good" ] && [ -z "$bad" ]; then rate=$(( good * 3 / 2 ))
        elif [ -n "$good" ] && [ -n "$bad" ] && [ $(( bad * 100 )) -gt $(( good * 112 )) ]; then rate=$(( (good + bad) / 2 ))
        elif [ -z "$good" ] && [ "$bad" -gt 100 ]; then rate=$(( bad / 2 ))
        else break
        fi
    done
}
if [ "$max_rate" = 1 ] && [ "$max_fresh" = 1 ]; then
    case "$p99_limit" in
        *ms) p99_limit_ms="${p99_limit%ms}" ;;
        *s) p99_limit_ms=$(( ${p99_limit%s} * 1000 )) ;;
        *) die "--p99-limit takes ms or s, e.g. 100ms" ;;
    esac
    want yijian && fresh_max yijian
    want peer && fresh_max peer
elif [ "$max_rate" = 1 ]; then
    want yijian && run_yijian max "$max_start" --max-rate --rate "$max_start" --step "$step" --p99-limit "$p99_limit" --quiet
    want peer && run_peer max "$max_start" --max-rate --rate "$max_start" --step "$step" --p99-limit "$p99_limit" --quiet
fi

report="$out_dir/compare-$stamp.md"
node "$here/compare-report.js" "$res_dir" >"$report" || die "writing the report failed"
cat "$report"
say "results: $report and $res_dir/ (logs, data dirs and configs: $work_dir/)"
