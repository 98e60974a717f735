#!/usr/bin/env bash
# A registrar under connection abuse (release build, loopback, TCP mapping, default
# limits): legitimate load (bench/src/bin/registrar-load.rs: PES PEs re-registering
# every 250 ms and PUS pool users resolving in a closed loop) measured alone, then
# again while an attacker keeps IDLE connections open that never send a byte (from ten
# source addresses, 127.0.0.2-11, so the per-host share does not stop them alone) and
# PARTIAL connections each holding an unfinished 64 KiB message (from 127.0.0.12-14),
# reopening whatever the registrar closes. Printed per phase: registrations/s, handle
# resolutions/s and their latency, the registrar's peak RSS; then what the listener
# refused and closed (its metrics).
#   bench/hostile-registrar.sh [SECONDS] [IDLE] [PARTIAL] [PES] [PUS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_=${1:-10}; IDLE=${2:-10000}; PARTIAL=${3:-3000}; PES=${4:-200}; PUS=${5:-20}
cargo build --release --quiet -p rserpool -p rserpool-bench
source bench/common.sh
need curl curl

setsid "$bin/rserpool" registrar --asap 127.0.0.1:0 --enrp 127.0.0.1:0 --announce off \
    --enrp-multicast off --admin 127.0.0.1:0 --log-level warn,rserpool::registrar=info \
    2>"$work/registrar.log" & pids+=($!)
registrar_pid=$!
ready "$work/registrar.log" ready
asap=$(grep -o 'asap=[0-9.:]*' "$work/registrar.log" | head -1 | cut -d= -f2)
admin=$(grep -o 'admin=[0-9.:]*' "$work/registrar.log" | head -1 | cut -d= -f2)

# phase NAME: the legitimate load for SECONDS_, with the registrar's peak RSS.
phase() {
    local peak=0 rss
    "$bin/registrar-load" --registrar "$asap" --pes "$PES" --pus "$PUS" --interval-ms 250 \
        --seconds "$SECONDS_" >"$work/load-$1.out" &
    local load=$!
    while kill -0 "$load" 2>/dev/null; do
        rss=$(awk '/VmRSS/ {print $2}' "/proc/$registrar_pid/status")
        [ "$rss" -gt "$peak" ] && peak=$rss
        sleep 0.2
    done
    wait "$load"
    echo "== $1"
    grep -E 'registrations/s|handle resolutions/s|latency|refused' "$work/load-$1.out"
    echo "registrar peak RSS:    $((peak / 1024)) MiB"
}

phase "legitimate load alone"

cat > "$work/attack.py" <<'EOF'
import socket, sys, threading, time
host, port = sys.argv[1], int(sys.argv[2])
idle, partial, seconds = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
held = {"idle": [], "partial": []}
opened = {"idle": 0, "partial": 0}
# An ASAP_REGISTRATION header announcing 65 532 bytes, then 60 000 of them: never finished.
PARTIAL = bytes([0x01, 0x00, 0xff, 0xfc]) + b"\0" * 60000
def keep(kind, count, sources, payload):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        alive = []
        for s in held[kind]:
            try:
                s.setblocking(False)
                if s.recv(1, socket.MSG_PEEK) == b"":
                    s.close()
                    continue
            except BlockingIOError:
                pass
            except OSError:
                s.close()
                continue
            alive.append(s)
        held[kind] = alive
        while len(held[kind]) < count and time.monotonic() < end:
            source = sources[(opened[kind]) % len(sources)]
            try:
                s = socket.create_connection((host, port), timeout=2, source_address=(source, 0))
                if payload:
                    s.sendall(payload)
                held[kind].append(s)
                opened[kind] += 1
            except OSError:
                time.sleep(0.01)
                break
        time.sleep(0.5)
threads = [
    threading.Thread(target=keep, args=("idle", idle, [f"127.0.0.{i}" for i in range(2, 12)], b"")),
    threading.Thread(target=keep, args=("partial", partial, [f"127.0.0.{i}" for i in range(12, 15)], PARTIAL)),
]
for t in threads: t.start()
for t in threads: t.join()
print(f"attacker opened {opened['idle']} idle and {opened['partial']} partial connections; held at the end: {len(held['idle'])} idle, {len(held['partial'])} partial")
EOF
python3 "$work/attack.py" 127.0.0.1 "${asap##*:}" "$IDLE" "$PARTIAL" $((SECONDS_ + 12)) >"$work/attack.out" &
attacker=$!
# Let the attacker reach its numbers before measuring.
sleep 5
phase "legitimate load while $IDLE idle and $PARTIAL partial connections are kept open"
wait "$attacker"
cat "$work/attack.out"
echo "== the ASAP listener's metrics"
curl -s "http://$admin/metrics" | grep -E '^rserpool_listener_(refused|closed)_total\{[^}]*listener="asap"' || true
