#!/usr/bin/env bash
# The DNS gateway during a spoofed flood from many prefixes (release build, loopback):
# a legitimate client (dnsperf, one client at 127.0.0.1 asking RATE queries/s, under
# the per-prefix response limit) measured alone and while a flood of FLOOD queries/s
# arrives with forged sources spread over 65 280 /24 prefixes (127.1-255.*.*, a raw
# socket). Side by side in the same run: Knot DNS 3.2 (one UDP worker) with its
# response rate limiting (mod-rrl, rate-limit 200, slip 2) serving an equivalent static
# zone, under the same flood. Printed per server and phase: the legitimate client's
# answered queries/s, lost queries and mean latency; then the gateway's rate-limiting
# counters.
#   bench/dns-flood.sh [SECONDS] [FLOOD] [RATE]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_=${1:-8}; FLOOD=${2:-30000}; RATE=${3:-150}
# shellcheck source=bench/common.sh
. bench/common.sh
need "dnsperf knot" dnsperf knotd
need python3 python3
need dnsutils dig
need curl curl
cargo build --release --quiet -p rserpool

start_knot "mod-rrl:" "  - id: flood" "    rate-limit: 200" "    slip: 2" \
    "template:" "  - id: default" "    global-module: mod-rrl/flood"

start_pool echopool
start_echopool_agent 8
dns_gateway_config 127.0.0.1:0
TOKIO_WORKER_THREADS=1 setsid "$bin/rserpool" gateway --config "$work/gateway.yaml" \
    --admin 127.0.0.1:0 2>"$work/gateway.log" & pids+=($!)
ready "$work/gateway.log" ready
gateway=$(grep -o 'dns=[0-9.:]*' "$work/gateway.log" | head -1 | cut -d= -f2)
admin=$(grep -o 'admin=[0-9.:]*' "$work/gateway.log" | head -1 | cut -d= -f2)
until dig @127.0.0.1 -p "${gateway##*:}" +short echopool.pool.example A | grep -q '^127.0.0.1$'; do sleep 0.2; done
until dig @127.0.0.1 -p 15354 +short echopool.pool.example A | grep -q 10.0.0.1; do sleep 0.2; done

cat > "$work/flood.py" <<'PY'
import random, socket, struct, sys, time
port, rate, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
name = b"".join(bytes([len(p)]) + p for p in b"echopool.pool.example".split(b".")) + b"\0"
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
def packet():
    dns = struct.pack("!HHHHHH", random.getrandbits(16), 0x0100, 1, 0, 0, 0) + name + b"\0\x01\0\x01"
    udp = struct.pack("!HHHH", random.randint(1024, 65535), port, 8 + len(dns), 0) + dns
    src = bytes([127, random.randint(1, 255), random.getrandbits(8), random.randint(1, 254)])
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, src, bytes([127, 0, 0, 1]))
    return ip + udp
pool = [packet() for _ in range(65536)]
sent, start = 0, time.monotonic()
while time.monotonic() - start < seconds:
    for _ in range(100):
        raw.sendto(pool[sent % len(pool)], ("127.0.0.1", 0))
        sent += 1
    ahead = sent / rate - (time.monotonic() - start)
    if ahead > 0:
        time.sleep(ahead)
print(f"flood: {sent / (time.monotonic() - start):.0f} queries/s sent")
PY

echo "echopool.pool.example A" > "$work/queries"
legitimate() { # port -> "answered/s lost avg_ms"
    dnsperf -s 127.0.0.1 -p "$1" -d "$work/queries" -c 1 -l "$SECONDS_" -Q "$RATE" 2>/dev/null | awk '
        /Queries lost:/ { lost = $3 } /Queries per second:/ { qps = $4 }
        /Average Latency/ { lat = $4 * 1000 }
        END { printf "%.0f answered/s, %s lost, %.2f ms mean\n", qps, lost, lat }'
}
for server in "gateway ${gateway##*:}" "knot 15354"; do
    set -- $server
    echo "== $1"
    echo "  alone:          $(legitimate "$2")"
    python3 "$work/flood.py" "$2" "$FLOOD" "$((SECONDS_ + 2))" > "$work/flood-$1.out" &
    flood=$!
    sleep 1
    echo "  under the flood: $(legitimate "$2")"
    wait "$flood"
    echo "  $(cat "$work/flood-$1.out")"
done
echo "== gateway counters"
curl -s "http://$admin/metrics" | grep -E '^rserpool_dns_(rate_limited|responses)_total' || true
