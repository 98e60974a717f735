#!/usr/bin/env bash
# TCP gateway benchmark: the gateway and HAProxy 2.6 (`mode tcp`, Debian's package, one
# thread, as in ../shared/baselines/haproxy.cfg) in front of the same two echo backends,
# with the same load generator on the same machine; prints each figure and the ratio
# gateway/HAProxy. Then the client-visible stall when the PE serving a session is killed
# (-9), over KILLS kills.
#   bench/tcp.sh [SECONDS] [KILLS]      (ROUNDS=3: runs per side, medians compared;
#                                        ONLY=bulk|connect|stall: one part)
# The gateway runs with one worker thread (TOKIO_WORKER_THREADS=1) like HAProxy's
# nbthread 1; THREADS=2 bench/tcp.sh measures again with two threads on both sides and
# prints each side's ratio of two threads to one.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_=${1:-5}; KILLS=${2:-50}; THREADS=${THREADS:-1}; ROUNDS=${ROUNDS:-3}
# shellcheck source=bench/common.sh
. bench/common.sh
need haproxy haproxy
cargo build --release --quiet -p rserpool -p rserpool-bench

setsid "$bin/tcp-load" echo --listen 127.0.0.1:18101 & pids+=($!)
setsid "$bin/tcp-load" echo --listen 127.0.0.1:18102 & pids+=($!)
start_pool EchoPool 18101 18102
# start_proxies N: the gateway with N tokio worker threads and HAProxy with nbthread N
# ($gateway, $haproxy).
start_proxies() {
    TOKIO_WORKER_THREADS=$1 setsid "$bin/rserpool" gateway --registrar "$asap" \
        --tcp 127.0.0.1:18093=EchoPool --log-level warn,rserpool::gateway=info 2>"$work/gateway-$1.log" & gateway=$!; pids+=($gateway)
    ready "$work/gateway-$1.log" ready
    cat > "$work/haproxy.cfg" <<CFG
global
  nbthread $1
  maxconn 5000
defaults
  mode tcp
  timeout connect 2s
  timeout client 30s
  timeout server 30s
frontend fet
  bind 127.0.0.1:18092
  default_backend bet
backend bet
  balance roundrobin
  server s1 127.0.0.1:18101
  server s2 127.0.0.1:18102
CFG
    haproxy -f "$work/haproxy.cfg" -D -p "$work/haproxy.pid"
    haproxy=$(cat "$work/haproxy.pid"); pids+=("$haproxy")
}
stop_proxies() {
    kill "$gateway" "$haproxy"
    for _ in $(seq 100); do kill -0 "$gateway" 2>/dev/null || kill -0 "$haproxy" 2>/dev/null || break; sleep 0.05; done
}
until "$bin/rserpool" resolve EchoPool --registrar "$asap" --count 10 | grep -q "2 pool element"; do sleep 0.2; done

field() { grep -o "$1=[0-9.]*" | cut -d= -f2; }
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
# Runs gateway and HAProxy alternately ROUNDS times (the box's other load drifts) and
# compares the medians; also the proxies' CPU time per unit of work (utime + stime),
# which the drift touches less. Arguments: the figure's name, the unit of work per
# second the load prints (KEY), then the load mode and flags.
compare() {
    local name=$1 mode=$2; shift 2
    local g=() h=() out t0 gcpu=0 hcpu=0 gwork=0 hwork=0 value
    for _ in $(seq "$ROUNDS"); do
        t0=$(cpu_ticks "$gateway")
        out=$("$bin/tcp-load" "$mode" --target 127.0.0.1:18093 "$@"); echo "  gateway: $out"
        gcpu=$((gcpu + $(cpu_ticks "$gateway") - t0))
        value=$(echo "$out" | field "$KEY"); g+=("$value")
        gwork=$(awk -v a="$gwork" -v v="$value" -v s="$SECONDS_" 'BEGIN { print a + v * s }')
        t0=$(cpu_ticks "$haproxy")
        out=$("$bin/tcp-load" "$mode" --target 127.0.0.1:18092 "$@"); echo "  haproxy: $out"
        hcpu=$((hcpu + $(cpu_ticks "$haproxy") - t0))
        value=$(echo "$out" | field "$KEY"); h+=("$value")
        hwork=$(awk -v a="$hwork" -v v="$value" -v s="$SECONDS_" 'BEGIN { print a + v * s }')
    done
    local hz
    gm=$(printf '%s\n' "${g[@]}" | median); hm=$(printf '%s\n' "${h[@]}" | median)
    hz=$(getconf CLK_TCK)
    awk -v g="$gm" -v h="$hm" -v n="$name" -v k="$KEY" -v unit="$UNIT" -v per="$PER" \
        -v gc="$gcpu" -v hc="$hcpu" -v gw="$gwork" -v hw="$hwork" -v hz="$hz" 'BEGIN {
            printf "=> %-28s %s gateway %s, HAProxy %s: gateway/HAProxy = %.2f\n", n, k, g, h, g / h
            printf "   %-28s CPU us per %s: gateway %.1f, HAProxy %.1f: HAProxy/gateway = %.2f\n", "", unit,
                gc / hz * 1e6 / (gw / per), hc / hz * 1e6 / (hw / per), (hc / hw) / (gc / gw) }'
}
wanted() { [ -z "${ONLY:-}" ] || [ "$ONLY" = "$1" ]; }
# measure_at N: every figure with both proxies on N threads; medians in by_threads.
declare -A by_threads
measure_at() {
    start_proxies "$1"
    echo "== TCP gateway vs HAProxy 2.6 mode tcp ($ROUNDS x $SECONDS_ s each, alternating; gateway worker threads and HAProxy nbthread: $1)"
    if wanted bulk; then
        KEY=MiB/s UNIT=MiB PER=1 compare "bulk, 1 connection" bulk --connections 1 --seconds "$SECONDS_"
        by_threads["bulk1 $1"]="$gm $hm"
        KEY=MiB/s UNIT=MiB PER=1 compare "bulk, 64 connections" bulk --connections 64 --seconds "$SECONDS_"
        by_threads["bulk64 $1"]="$gm $hm"
    fi
    if wanted connect; then
        KEY=connections/s UNIT=connection PER=1 compare "connection rate, 64 clients" connect --concurrency 64 --seconds "$SECONDS_"
        by_threads["connect $1"]="$gm $hm"
    fi
    echo "gateway RSS after the runs: $(awk '/VmRSS/ {print $2, $3}' /proc/$gateway/status)"
    stop_proxies
}
measure_at 1
if [ "$THREADS" -ge 2 ]; then
    measure_at "$THREADS"
    echo "== $THREADS threads against one (same run; each side's median at $THREADS over its median at 1)"
    for figure in bulk1 bulk64 connect; do
        [ -n "${by_threads["$figure 1"]:-}" ] || continue
        read -r g1 h1 <<<"${by_threads["$figure 1"]}"; read -r g2 h2 <<<"${by_threads["$figure $THREADS"]}"
        awk -v f="$figure" -v g1="$g1" -v h1="$h1" -v g2="$g2" -v h2="$h2" -v n="$THREADS" 'BEGIN {
            printf "   %-8s gateway %.2fx, HAProxy %.2fx; gateway/HAProxy at %d threads %.2f\n", f, g2 / g1, h2 / h1, n, g2 / h2 }'
    done
fi

wanted stall || exit 0
echo "== Failover stall: the PE serving a session killed with -9, $KILLS times"
TOKIO_WORKER_THREADS=$THREADS setsid "$bin/rserpool" gateway --registrar "$asap" \
    --tcp 127.0.0.1:18094=CounterPool --log-level warn,rserpool::gateway=info \
    2>"$work/gateway-stall.log" & pids+=($!)
ready "$work/gateway-stall.log" ready
"$bin/tcp-load" stall --target 127.0.0.1:18094 --rserpool "$bin/rserpool" --registrar "$asap" \
    --kills "$KILLS"
