#!/usr/bin/env bash
# ENRP benchmark (release build, loopback, TCP mapping, rsplib timers):
#  1. three registrars in a static mesh; 3 000 PEs re-registering every 250 ms, spread
#     across them: ENRP messages per second and CPU per registrar;
#  2. a registrar holding 100 000 PEs, and the time a newcomer takes to download the
#     handlespace from it (its mentor) before it serves ASAP.
#   bench/enrp.sh [PES] [SECONDS] [TABLE_PES]
set -euo pipefail
cd "$(dirname "$0")/.."
PES=${1:-3000}; SECONDS_=${2:-10}; TABLE=${3:-100000}
cargo build --release --quiet -p rserpool -p rserpool-bench
ulimit -n 65536 2>/dev/null || true
work=$(mktemp -d)
pids=()
trap 'kill ${pids[*]} 2>/dev/null; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
printf 'registrar:\n  limits:\n    max_connections: 100000\n    max_connections_per_host: 100000\n    max_handle_resolutions_per_second: null\n    max_pool_elements_per_association: 100000\n' > "$work/limits.yaml"
start_registrar() { # name asap enrp peers...
    local name=$1 asap=$2 enrp=$3; shift 3
    local peers=(); for p in "$@"; do peers+=(--peer "$p"); done
    target/release/rserpool registrar --config "$work/limits.yaml" --asap "$asap" --enrp "$enrp" \
        --announce off --enrp-multicast off --profile rsplib "${peers[@]}" 2>"$work/$name.log" &
    pids+=($!); echo $! > "$work/$name.pid"
}
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
wait_for() { for _ in $(seq 600); do grep -q "$2" "$work/$1.log" && return 0; sleep 0.1; done; echo "timeout waiting for $2 in $1" >&2; return 1; }

echo "== 1. three registrars, $PES PEs re-registering every 250 ms"
a=(); e=()
for i in 0 1 2; do a+=("127.0.0.1:$(free_port)"); e+=("127.0.0.1:$(free_port)"); done
start_registrar r0 "${a[0]}" "${e[0]}" "${e[1]}" "${e[2]}"
start_registrar r1 "${a[1]}" "${e[1]}" "${e[0]}" "${e[2]}"
start_registrar r2 "${a[2]}" "${e[2]}" "${e[0]}" "${e[1]}"
for r in r0 r1 r2; do wait_for $r synchronized; done
declare -A before
for r in r0 r1 r2; do before[$r]=$(cpu "$(cat "$work/$r.pid")"); done
t0=$(date +%s.%N)
target/release/registrar-load --registrar "${a[0]}" --registrar "${a[1]}" --registrar "${a[2]}" \
    --pes "$PES" --pus 0 --interval-ms 250 --seconds "$SECONDS_" | grep -E 'registrations/s|refused'
t1=$(date +%s.%N)
total=0
for r in r0 r1 r2; do
    pid=$(cat "$work/$r.pid"); after=$(cpu "$pid")
    awk -v b="${before[$r]}" -v a="$after" -v t0="$t0" -v t1="$t1" -v hz="$ticks" -v r="$r" \
        'BEGIN { printf "%s CPU: %.0f %% of one core\n", r, 100*(a-b)/hz/(t1-t0) }'
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    received=$(grep -o 'enrp_received=[0-9]*' "$work/$r.log" | cut -d= -f2)
    total=$((total + received))
done
awk -v n="$total" -v t0="$t0" -v t1="$t1" 'BEGIN { printf "ENRP messages received by the three: %d, %.0f per second (whole run incl. warm-up)\n", n, n/(t1-t0) }'

echo "== 2. a newcomer downloads a $TABLE-PE handlespace from its mentor"
ma="127.0.0.1:$(free_port)"; me="127.0.0.1:$(free_port)"
start_registrar mentor "$ma" "$me"
wait_for mentor ready
target/release/registrar-load --registrar "$ma" --pes "$TABLE" --pes-per-association 1000 \
    --interval-ms 600000 --register-only > "$work/load.out" &
pids+=($!)
for _ in $(seq 1200); do grep -q registered "$work/load.out" && break; sleep 0.1; done
cat "$work/load.out"
na="127.0.0.1:$(free_port)"; ne="127.0.0.1:$(free_port)"
t0=$(date +%s.%N)
start_registrar newcomer "$na" "$ne" "$me"
wait_for newcomer synchronized
t1=$(date +%s.%N)
grep -o 'synchronized.*' "$work/newcomer.log" | head -1
awk -v t0="$t0" -v t1="$t1" 'BEGIN { printf "newcomer: started and synchronized in %.2f s\n", t1-t0 }'
echo "newcomer RSS: $(awk '/VmRSS/ {print $2, $3}' "/proc/$(cat "$work/newcomer.pid")/status")"
