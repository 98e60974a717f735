#!/usr/bin/env bash
# Registrar benchmark: one release `rserpool registrar` on loopback, loaded by
# bench/src/bin/registrar-load.rs with rsplib's load point (1 000 PEs re-registering every
# 250 ms, 2 000 pool users resolving in a closed loop). Prints the load generator's
# figures and the registrar's CPU use over the run.
#   bench/registrar.sh [PES] [PUS] [REREG_MS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
PES=${1:-1000}; PUS=${2:-2000}; REREG=${3:-250}; SECONDS_=${4:-10}
cargo build --release --quiet -p rserpool -p rserpool-bench
ulimit -n 65536 2>/dev/null || true
log=$(mktemp)
config=$(mktemp --suffix=.yaml)
printf 'registrar:\n  limits:\n    max_connections: 100000\n    max_connections_per_host: 100000\n    max_handle_resolutions_per_second: null\n' > "$config"
target/release/rserpool registrar --asap 127.0.0.1:0 --enrp 127.0.0.1:0 --announce off \
    --config "$config" --log-level warn,rserpool::registrar=info 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null; rm -f "$log" "$config"' EXIT
for _ in $(seq 50); do grep -q ready "$log" && break; sleep 0.1; done
asap=$(grep -o 'asap=[0-9.:]*' "$log" | cut -d= -f2)
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
before=$(cpu); t0=$(date +%s.%N)
target/release/registrar-load --registrar "$asap" --pes "$PES" --pus "$PUS" --interval-ms "$REREG" --seconds "$SECONDS_"
after=$(cpu); t1=$(date +%s.%N)
awk -v b="$before" -v a="$after" -v t0="$t0" -v t1="$t1" -v hz="$ticks" \
    'BEGIN { printf "registrar CPU:         %.0f %% of one core (%.1f s CPU in %.1f s)\n", 100*(a-b)/hz/(t1-t0), (a-b)/hz, t1-t0 }'
echo "registrar RSS:         $(awk '/VmRSS/ {print $2, $3}' /proc/$pid/status)"
