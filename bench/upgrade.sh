#!/usr/bin/env bash
# Binary upgrade benchmark: a release gateway with an HTTP listener in front of one
# keep-alive backend, under HTTP load (bench/src/bin/http-chaos.rs: CONNECTIONS
# keep-alive connections, each request waiting for its answer), upgraded UPGRADES times
# in a row with SIGUSR2 (the same binary re-executed; each new process upgraded next).
# Prints, over the upgrades: how long each took (SIGUSR2 to the new process's pid file,
# and to the old process's exit), and the longest request in each upgrade's window
# (SIGUSR2 to the old process's exit) against the longest in the same length of time
# before the first upgrade (the anchor); then the failed requests (must be 0).
#   bench/upgrade.sh [UPGRADES] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
UPGRADES=${1:-20}; CONNECTIONS=${2:-8}
# shellcheck source=bench/common.sh
. bench/common.sh
cargo build --release --quiet -p rserpool -p rserpool-bench

setsid "$bin/http-chaos" backend --listen 127.0.0.1:18301 & pids+=($!)
start_pool WebPool 18301
pid_file=$work/gateway.pid
pid_files+=("$pid_file")
setsid "$bin/rserpool" gateway --registrar "$asap" --http 127.0.0.1:18300=WebPool \
    --pid-file "$pid_file" --log-level warn,rserpool::gateway=info 2>"$work/gateway.log" & pids+=($!)
ready "$work/gateway.log" ready
until "$bin/rserpool" resolve WebPool --registrar "$asap" | grep -q "1 pool element"; do sleep 0.2; done

now_ms() { date +%s%3N; }
seconds=$((UPGRADES * 2 + 6))
"$bin/http-chaos" load --target 127.0.0.1:18300 --connections "$CONNECTIONS" --seconds "$seconds" \
    --samples "$work/samples" > "$work/load.out" & load=$!
sleep 3
: > "$work/upgrades"
for _ in $(seq "$UPGRADES"); do
    old=$(cat "$pid_file")
    start=$(now_ms)
    kill -USR2 "$old"
    until [ "$(cat "$pid_file" 2>/dev/null)" != "$old" ] && [ -s "$pid_file" ]; do sleep 0.005; done
    serving=$(now_ms)
    # Gone: no such process, or a zombie nobody has reaped yet (an upgraded process's
    # parent is the one before it, which has exited).
    while kill -0 "$old" 2>/dev/null && ! grep -q ') Z ' "/proc/$old/stat" 2>/dev/null; do sleep 0.005; done
    gone=$(now_ms)
    echo "$start $serving $gone" >> "$work/upgrades"
    sleep 1
done
wait "$load"
# Per upgrade: time to the new process serving, to the old one gone, and the longest
# request that started in its window; then the anchor and the failures.
awk '
    FNR == NR { s[NR] = $1; e[NR] = $3; n = NR; took[NR] = $2 - $1; gone[NR] = $3 - $1; next }
    {
        requests++
        if ($3 != 200) failed++
        for (i = 1; i <= n; i++) if ($1 >= s[i] && $1 <= e[i] && $2 / 1000 > worst[i]) worst[i] = $2 / 1000
        sample[requests] = $1; latency[requests] = $2 / 1000
    }
    END {
        span = 0; for (i = 1; i <= n; i++) span += e[i] - s[i]; span /= n
        anchor = 0
        for (r = 1; r <= requests; r++)
            if (sample[r] >= s[1] - span && sample[r] < s[1] && latency[r] > anchor) anchor = latency[r]
        for (i = 1; i <= n; i++) printf "upgrade %d %d %.1f\n", took[i], gone[i], worst[i]
        printf "total %d %d %.1f\n", requests, failed + 0, anchor
    }' "$work/upgrades" "$work/samples" > "$work/figures"
quantiles() { sort -n | awk '{ v[NR] = $1 } END { p50 = int(NR * 0.5 + 0.5); p99 = int(NR * 0.99 + 0.5); if (p50 < 1) p50 = 1; if (p99 < 1) p99 = 1; printf "p50 %s, p99 %s, max %s", v[p50], v[p99], v[NR] }'; }
read -r _ requests failed anchor < <(grep '^total' "$work/figures")
echo "$UPGRADES upgrades under $CONNECTIONS keep-alive connections: $requests requests, $failed failed"
echo "SIGUSR2 to the new process serving (ms): $(grep '^upgrade' "$work/figures" | cut -d' ' -f2 | quantiles)"
echo "SIGUSR2 to the old process gone (ms):    $(grep '^upgrade' "$work/figures" | cut -d' ' -f3 | quantiles)"
echo "longest request in an upgrade's window (ms): $(grep '^upgrade' "$work/figures" | cut -d' ' -f4 | quantiles); the same span before the first upgrade: $anchor ms"
cat "$work/load.out"
