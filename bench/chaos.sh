#!/usr/bin/env bash
# Failover under faults, side by side: steady GET load (bench/src/bin/http-chaos.rs: 16
# keep-alive connections, every answer checked) through the HTTP gateway and through
# HAProxy 2.6 (bench/chaos-haproxy.cfg: its best failover: layer-7 observation,
# error-limit with on-error mark-down, redispatch, retry-on all-retryable-errors,
# health checks every second), in front of the same three backends (1 ms per answer),
# with the same fault schedule. Faults, one per run, each on backend 1, from 5 s in:
#   kill      kill -9, started again 10 s later (same port)
#   stop      SIGSTOP for 20 s, then SIGCONT
#   503       answers 503 for 10 s
#   slow      answers 10 times slower (10 ms) for 10 s
#   blackhole its packets dropped (nft, both directions) for 10 s
# Each proxy starts afresh for each fault (no ejection or health state carried over).
# Printed per fault and proxy, over the fault and the 5 s after it: requests, failed
# requests (not 200, or no answer), p99 and max latency.
# `resume` (not among the defaults): 20 GETs of 256 MiB through each proxy, the
# serving backend aborting at a random offset of each (restarted before the next);
# prints how many downloads arrived byte-identical (SHA-256 against a direct GET).
# `posts`: 8 sticky sessions POST to three `pe --serve http` PEs through a route with
# idempotency_keys for 60 s while one PE is killed (-9) every 5 s and replaced; then
# the same without the keys. Each answer's session count must be the last one plus
# one: prints failed requests, requests applied twice and applied ones lost.
# Runs in a network namespace of its own (unshare; only its loopback), which the
# black hole's nft rules live and die in.
#   bench/chaos.sh [FAULT...]     (default: all five)
#   bench/chaos.sh resume
#   bench/chaos.sh posts
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${CHAOS_NAMESPACE:-}" ]; then
    command -v nft >/dev/null || apt-get install -y nftables >/dev/null
    cargo build --release --quiet -p rserpool -p rserpool-bench
    exec unshare --net env CHAOS_NAMESPACE=1 bash "$0" "$@"
fi
ip link set lo up
# shellcheck source=bench/common.sh
. bench/common.sh
need "haproxy" haproxy
faults=("$@"); [ ${#faults[@]} -gt 0 ] || faults=(kill stop 503 slow blackhole)
ports=(18101 18102 18103)

start_backend() {
    setsid "$bin/http-chaos" backend --listen "127.0.0.1:$1" --delay-ms 1 >"$work/backend-$1.log" 2>&1 &
    backend_pid[$1]=$!; pids+=($!)
    ready "$work/backend-$1.log" listening
}
declare -A backend_pid
for port in "${ports[@]}"; do start_backend "$port"; done

# The registrar and one agent per backend, health-checked like HAProxy's servers.
setsid "$bin/rserpool" registrar --asap 127.0.0.1:0 --enrp 127.0.0.1:0 --announce off --enrp-multicast off \
    --log-level warn,rserpool::registrar=info 2>"$work/registrar.log" & pids+=($!)
ready "$work/registrar.log" ready
asap=$(grep -o 'asap=[0-9.:]*' "$work/registrar.log" | cut -d= -f2)
for port in "${ports[@]}"; do
    setsid "$bin/rserpool" pe --pool WebPool --backend "127.0.0.1:$port" --registrar "$asap" \
        --health http:/healthz --health-interval 1s 2>"$work/pe-$port.log" & pids+=($!)
done
cat > "$work/gateway.yaml" <<YAML
pool_user:
  registrars: [$asap]
gateway:
  http:
    - listen: 127.0.0.1:18089
      routes:
        - pool: WebPool
          hedge_after: p99
log:
  level: warn,rserpool::gateway=info
YAML

# all_registered: the three PEs are in WebPool.
all_registered() {
    for _ in $(seq 100); do
        [ "$("$bin/rserpool" resolve --registrar "$asap" WebPool 2>/dev/null | grep -c 127.0.0.1)" = 3 ] && return 0
        sleep 0.1
    done
    echo "WebPool did not get its three PEs" >&2; exit 1
}

start_proxy() {
    case $1 in
        gateway)
            setsid "$bin/rserpool" gateway --config "$work/gateway.yaml" 2>"$work/gateway.log" & proxy_pid=$!
            ready "$work/gateway.log" ready
            proxy_address=127.0.0.1:18089 ;;
        haproxy)
            haproxy -f bench/chaos-haproxy.cfg -D -p "$work/haproxy.pid"
            proxy_pid=$(cat "$work/haproxy.pid")
            proxy_address=127.0.0.1:18090 ;;
    esac
    pids+=("$proxy_pid")
}

# fault NAME on|off: applies or lifts a fault on backend 1.
fault() {
    local port=${ports[0]}
    case $1/$2 in
        kill/on) kill -9 "${backend_pid[$port]}"; wait "${backend_pid[$port]}" 2>/dev/null || true ;;
        kill/off) start_backend "$port" ;;
        stop/on) kill -STOP "${backend_pid[$port]}" ;;
        stop/off) kill -CONT "${backend_pid[$port]}" ;;
        503/on) "$bin/http-chaos" poke --target "127.0.0.1:$port" --path "/chaos/fail?secs=10" ;;
        slow/on) "$bin/http-chaos" poke --target "127.0.0.1:$port" --path "/chaos/slow?secs=10&factor=10" ;;
        503/off | slow/off) ;;
        blackhole/on)
            nft add table inet chaos
            nft add chain inet chaos input '{ type filter hook input priority 0; }'
            nft add rule inet chaos input tcp dport "$port" drop
            nft add rule inet chaos input tcp sport "$port" drop ;;
        blackhole/off) nft delete table inet chaos ;;
    esac
}

# run FAULT PROXY: the load over the fault; prints the window's figures.
run() {
    local name=$1 proxy=$2 length=10 lead=5 tail=5
    [ "$name" = stop ] && length=20
    all_registered
    start_proxy "$proxy"
    "$bin/http-chaos" load --target "$proxy_address" --connections 16 \
        --seconds $((lead + length + tail)) --samples "$work/samples" >"$work/load.log" &
    local load=$!
    sleep "$lead"
    local from; from=$(date +%s%3N)
    fault "$name" on
    sleep "$length"
    fault "$name" off
    local to; to=$(( $(date +%s%3N) + tail * 1000 ))
    wait "$load"
    kill "$proxy_pid" 2>/dev/null || true
    wait "$proxy_pid" 2>/dev/null || true
    python3 - "$work/samples" "$from" "$to" "$name" "$proxy" <<'PY'
import sys
path, start, end, fault, proxy = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
latencies, failed = [], 0
for line in open(path):
    at, micros, status = (int(x) for x in line.split())
    if start <= at <= end:
        latencies.append(micros)
        failed += status != 200
latencies.sort()
p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] / 1000 if latencies else 0
top = latencies[-1] / 1000 if latencies else 0
print(f"{fault:<10} {proxy:<8} {len(latencies):>9} {failed:>7} {p99:>9.1f} {top:>9.1f}")
PY
}

# resume PROXY: 20 downloads of 256 MiB, each backend serving a whole one dying at a
# random offset; prints the identical ones.
resume() {
    local proxy=$1 identical=0 round offset port got
    start_proxy "$proxy"
    for round in $(seq 20); do
        all_registered
        offset=$(shuf -i 1-268435455 -n 1)
        got=$( (curl -s --max-time 120 "http://$proxy_address/blob?mib=256&die_at=$offset" || true) | sha256sum | cut -d' ' -f1)
        [ "$got" = "$expected" ] && identical=$((identical + 1))
        for port in "${ports[@]}"; do
            kill -0 "${backend_pid[$port]}" 2>/dev/null || { wait "${backend_pid[$port]}" 2>/dev/null || true; start_backend "$port"; }
        done
    done
    kill "$proxy_pid" 2>/dev/null || true
    wait "$proxy_pid" 2>/dev/null || true
    echo "resume     $proxy  $identical of 20 downloads of 256 MiB byte-identical, the serving backend dying mid-body in each"
}

# posts KEYED: the POST sessions against a route with idempotency_keys KEYED.
posts() {
    local keyed=$1 round victim
    cat > "$work/posts.yaml" <<YAML
pool_user:
  registrars: [$asap]
gateway:
  http:
    - listen: 127.0.0.1:18088
      sticky:
        keys: ["000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"]
      routes:
        - pool: PostPool
          idempotency_keys: $keyed
log:
  level: warn,rserpool::gateway=info
YAML
    local demo=()
    for round in 1 2 3; do
        setsid "$bin/rserpool" pe --serve http --pool PostPool --registrar "$asap" 2>"$work/post-pe.log" & demo+=($!); pids+=($!)
    done
    setsid "$bin/rserpool" gateway --config "$work/posts.yaml" 2>"$work/posts-gateway.log" & local gateway=$!; pids+=($!)
    ready "$work/posts-gateway.log" ready
    "$bin/http-chaos" sessions --target 127.0.0.1:18088 --connections 8 --seconds 60 >"$work/posts.out" &
    local load=$!
    for round in $(seq 11); do
        sleep 5
        victim=${demo[$((round % 3))]}
        kill -9 "$victim"; wait "$victim" 2>/dev/null || true
        setsid "$bin/rserpool" pe --serve http --pool PostPool --registrar "$asap" 2>>"$work/post-pe.log" & demo[$((round % 3))]=$!; pids+=($!)
    done
    wait "$load"
    kill "$gateway" "${demo[@]}" 2>/dev/null || true
    wait "$gateway" "${demo[@]}" 2>/dev/null || true
    echo "posts      idempotency_keys=$keyed: $(cat "$work/posts.out") (11 PEs killed)"
}

if [ "${faults[*]}" = posts ]; then
    posts true
    posts false
    exit 0
fi
if [ "${faults[*]}" = resume ]; then
    need curl curl
    expected=$(curl -s "http://127.0.0.1:${ports[1]}/blob?mib=256" | sha256sum | cut -d' ' -f1)
    for proxy in gateway haproxy; do resume "$proxy"; done
    exit 0
fi
echo "fault      proxy     requests  failed   p99(ms)   max(ms)"
for name in "${faults[@]}"; do
    for proxy in gateway haproxy; do run "$name" "$proxy"; done
done
