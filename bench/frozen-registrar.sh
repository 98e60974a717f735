#!/usr/bin/env bash
# A frozen registrar (SIGSTOP) that is the home of every PE and the gateway's registrar,
# with a second registrar up (release build, loopback, TCP mapping, RFC timers): a
# client loop sends DNS queries, HTTP requests and new TCP sessions through one gateway
# (five of each per second) before, during FROZEN seconds of the freeze, and after it.
# Printed: requests and failures per kind, and the longest time one request took
# (the stall a client saw). The target of the hostile-networks issue: 0 failed, the
# longest stall under 5 s.
#   bench/frozen-registrar.sh [FROZEN] [BEFORE_AND_AFTER]   (KEEP=DIR keeps the logs in DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
FROZEN=${1:-100}; AROUND=${2:-10}
cargo build --release --quiet -p rserpool
source bench/common.sh
need dnsutils dig
if [ -n "${KEEP:-}" ]; then
    trap 'mkdir -p "$KEEP" && cp -r "$work"/. "$KEEP"/; cleanup' EXIT
fi

# registrar NAME [PEER_ENRP]: starts a registrar on ports the kernel picks; its ASAP
# and ENRP addresses are in $asap_of[NAME] and $enrp_of[NAME].
declare -A asap_of enrp_of pid_of
registrar() {
    local name=$1 peers=()
    [ -n "${2:-}" ] && peers=(--peer "$2")
    setsid "$bin/rserpool" registrar --asap 127.0.0.1:0 --enrp 127.0.0.1:0 --announce off \
        --enrp-multicast off "${peers[@]}" --log-level info 2>"$work/$name.log" & pids+=($!)
    pid_of[$name]=$!
    ready "$work/$name.log" ready
    asap_of[$name]=$(grep -o 'asap=[0-9.:]*' "$work/$name.log" | head -1 | cut -d= -f2)
    enrp_of[$name]=$(grep -o 'enrp=[0-9.:]*' "$work/$name.log" | head -1 | cut -d= -f2)
}

# Three web servers, each an agent registering it at the first registrar only.
backends=()
for i in 1 2 3; do
    mkdir -p "$work/www$i" && echo "backend $i" > "$work/www$i/index.html"
    setsid python3 -m http.server 0 --bind 127.0.0.1 --directory "$work/www$i" >"$work/www$i.log" 2>&1 & pids+=($!)
    for _ in $(seq 100); do grep -q 'Serving HTTP' "$work/www$i.log" && break; sleep 0.1; done
    backends+=("$(grep -o 'port [0-9]*' "$work/www$i.log" | head -1 | cut -d' ' -f2)")
done
registrar home
for port in "${backends[@]}"; do
    setsid "$bin/rserpool" pe --pool WebPool --backend "127.0.0.1:$port" --registrar "${asap_of[home]}" \
        --health tcp 2>"$work/pe-$port.log" & pids+=($!)
    ready "$work/pe-$port.log" registered
done
# The gateway knows both registrars; the second starts after the gateway found the
# first, so the frozen one is the gateway's registrar too.
second_asap=127.0.0.1:$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/gateway.yaml" <<EOF
pool_user:
  registrars: [${asap_of[home]}, $second_asap]
gateway:
  tcp: [{listen: 127.0.0.1:0, pool: WebPool}]
  http: [{listen: 127.0.0.1:0, routes: [{pool: WebPool}]}]
  dns: [{listen: 127.0.0.1:0, zone: pool.example., names: {web: WebPool}, rate_limit: 0}]
log:
  level: info
EOF
setsid "$bin/rserpool" gateway --config "$work/gateway.yaml" 2>"$work/gateway.log" & pids+=($!)
ready "$work/gateway.log" ready
tcp=$(grep -o ' tcp=[0-9.:]*' "$work/gateway.log" | head -1 | cut -d= -f2)
http=$(grep -o ' http=[0-9.:]*' "$work/gateway.log" | head -1 | cut -d= -f2)
dns=$(grep -o ' dns=[0-9.:]*' "$work/gateway.log" | head -1 | cut -d= -f2)
# The second registrar, on the port the gateway was given, peering with the first.
setsid "$bin/rserpool" registrar --asap "$second_asap" --enrp 127.0.0.1:0 --announce off \
    --enrp-multicast off --peer "${enrp_of[home]}" --log-level info 2>"$work/second.log" & pids+=($!)
ready "$work/second.log" synchronized

cat > "$work/client.py" <<'EOF'
import socket, struct, sys, threading, time
tcp, http, dns, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
def addr(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)
TIMEOUT = 10.0
def query_dns():
    q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(l)]) + l for l in b"web.pool.example".split(b".")) + b"\0"
    q += struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(TIMEOUT)
    try:
        s.sendto(q, addr(dns))
        answer, _ = s.recvfrom(4096)
        rcode = answer[3] & 0xF
        ancount = struct.unpack(">H", answer[6:8])[0]
        return rcode == 0 and ancount > 0
    finally:
        s.close()
def get(target):
    s = socket.create_connection(addr(target), timeout=TIMEOUT)
    try:
        s.sendall(b"GET /index.html HTTP/1.0\r\nHost: web\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.startswith(b"HTTP/1.") and b" 200 " in data.split(b"\r\n", 1)[0] and b"backend" in data
    finally:
        s.close()
kinds = {"dns": query_dns, "http": lambda: get(http), "tcp": lambda: get(tcp)}
stats = {k: [0, 0, 0.0] for k in kinds}
lock = threading.Lock()
def loop(kind):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.monotonic()
        try:
            ok = kinds[kind]()
        except Exception:
            ok = False
        took = time.monotonic() - t0
        with lock:
            s = stats[kind]
            s[0] += 1
            s[1] += 0 if ok else 1
            s[2] = max(s[2], took)
        time.sleep(max(0.0, 0.2 - took))
threads = [threading.Thread(target=loop, args=(k,)) for k in kinds]
for t in threads: t.start()
for t in threads: t.join()
for k, (n, failed, longest) in stats.items():
    print(f"{k}: {n} requests, {failed} failed, longest {longest:.2f} s")
EOF

total=$((AROUND + FROZEN + AROUND))
echo "== ${AROUND} s normal, ${FROZEN} s with the home registrar frozen (SIGSTOP), ${AROUND} s after (SIGCONT)"
python3 "$work/client.py" "$tcp" "$http" "$dns" "$total" > "$work/client.out" &
client=$!
sleep "$AROUND"
kill -STOP "${pid_of[home]}"
sleep "$FROZEN"
kill -CONT "${pid_of[home]}"
wait "$client"
cat "$work/client.out"
echo "gateway: $(grep -c 'hunting another' "$work/gateway.log" || true) registrar switch(es) for silence"
echo "second registrar: $(grep -c 'took over' "$work/second.log" || true) takeover(s)"
