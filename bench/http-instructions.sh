#!/usr/bin/env bash
# User-space instructions per request of the HTTP gateway and of HAProxy 2.6, counted by
# callgrind (Debian's valgrind): exact and repeatable where bench/http.sh's requests/s
# move with the machine's load. Each proxy runs under callgrind (one thread) in front of
# the same nginx backends; after 200 warm-up requests, counting covers REQUESTS keep-alive
# GETs from one client (python http.client). Kernel work (system calls, loopback TCP) is
# not counted: bench/http.sh's CPU time per request covers it.
#   bench/http-instructions.sh [REQUESTS]      (default 2000)
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${1:-2000}
baselines=$(cd ../shared/baselines && pwd)
# shellcheck source=bench/common.sh
. bench/common.sh
need "haproxy nginx-light valgrind python3" haproxy nginx callgrind_control python3
cargo build --release --quiet -p rserpool
mkdir -p /tmp/baselines
pid_files+=(/tmp/baselines/nginx.pid)
nginx -c "$baselines/nginx-backend.conf"
start_pool WebPool 18081 18082

# get PORT COUNT: COUNT keep-alive GETs on one connection.
get() {
    python3 - "$1" "$2" <<'PY'
import http.client, sys
connection = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
for _ in range(int(sys.argv[2])):
    connection.request("GET", "/")
    response = connection.getresponse()
    response.read()
    assert response.status == 200, response.status
PY
}
# count NAME PID PORT: callgrind's count over REQUESTS requests, per request.
count() {
    local name=$1 pid=$2 port=$3 out
    get "$port" 200
    callgrind_control -i on "$pid" >/dev/null 2>&1
    get "$port" "$REQUESTS"
    callgrind_control -i off "$pid" >/dev/null 2>&1
    callgrind_control -d "$pid" >/dev/null 2>&1
    sleep 1
    out=$(ls -t "$work/$name".out* | head -1)
    callgrind_annotate "$out" 2>/dev/null | awk -v n="$REQUESTS" -v who="$name" \
        '/PROGRAM TOTALS/ { gsub(",", "", $1); printf "   %-8s %.0f instructions per request\n", who, $1 / n }'
}

web_gateway_config
TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/gateway.out" \
    "$bin/rserpool" gateway --config "$work/gateway.yaml" 2>"$work/gateway.log" & gateway=$!; pids+=($gateway)
ready "$work/gateway.log" ready
until "$bin/rserpool" resolve WebPool --registrar "$asap" --count 10 | grep -q "2 pool element"; do sleep 0.2; done

sed 's/127.0.0.1:18091/127.0.0.1:18591/; s/127.0.0.1:18092/127.0.0.1:18592/' "$baselines/haproxy.cfg" > "$work/haproxy.cfg"
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/haproxy.out" \
    haproxy -f "$work/haproxy.cfg" -db 2>"$work/haproxy.log" & haproxy=$!; pids+=($haproxy)
for _ in $(seq 100); do python3 -c 'import socket; socket.create_connection(("127.0.0.1", 18591), 1)' 2>/dev/null && break; sleep 0.1; done

echo "=> user-space instructions per request ($REQUESTS keep-alive GETs, callgrind)"
count gateway "$gateway" 18089
count haproxy "$haproxy" 18591
