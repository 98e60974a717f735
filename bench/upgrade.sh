#!/usr/bin/env bash
# Binary upgrade benchmark: a release gateway with a TCP listener (a counter pool: one
# `rserpool pe --serve counter`), an HTTP listener (one keep-alive backend) and a DNS
# listener, upgraded UPGRADES times in a row with SIGUSR2 (the same binary
# re-executed; each new process upgraded next) while under load:
#   - CHATTY TCP sessions sending a line every 10 ms, each answer checked to be the
#     session's next count, and IDLE sessions with one line at the start and one at
#     the end, whose answer must be 2 (bench/src/bin/session-load.rs);
#   - DNS queries over UDP one after another (same tool; unanswered within 2 s counts);
#   - keep-alive HTTP GETs on CONNECTIONS connections (bench/src/bin/http-chaos.rs).
# Prints, over the upgrades (p50/p99/max): SIGUSR2 to the new process serving, SIGUSR2
# to the old process gone, and the client-visible stall (the longest gap between two
# answers of a chatty session in the upgrade's window, less the 10 ms pace) against
# the longest in the same span before the first upgrade (the anchor); the gateway
# processes left after each upgrade; the new process's RSS after the first and the
# last upgrade; then what held: sessions continuous, HTTP requests failed, DNS queries
# unanswered, HTTP connections opened (CONNECTIONS when every one went over).
#   bench/upgrade.sh [UPGRADES] [CONNECTIONS] [CHATTY] [IDLE]
set -euo pipefail
cd "$(dirname "$0")/.."
UPGRADES=${1:-20}; CONNECTIONS=${2:-8}; CHATTY=${3:-100}; IDLE=${4:-1000}
# shellcheck source=bench/common.sh
. bench/common.sh
cargo build --release --quiet -p rserpool -p rserpool-bench

setsid "$bin/http-chaos" backend --listen 127.0.0.1:18301 & pids+=($!)
start_pool WebPool 18301
setsid "$bin/rserpool" pe --serve counter --pool CounterPool --registrar "$asap" 2>"$work/counter.log" & pids+=($!)
pid_file=$work/gateway.pid
pid_files+=("$pid_file")
setsid "$bin/rserpool" gateway --registrar "$asap" --http 127.0.0.1:18300=WebPool \
    --tcp 127.0.0.1:18302=CounterPool --dns 127.0.0.1:18303 --zone pool.test. \
    --pid-file "$pid_file" --log-level warn,rserpool::gateway=info 2>"$work/gateway.log" & pids+=($!)
ready "$work/gateway.log" ready
until "$bin/rserpool" resolve WebPool --registrar "$asap" | grep -q "1 pool element" &&
    "$bin/rserpool" resolve CounterPool --registrar "$asap" | grep -q "1 pool element"; do sleep 0.2; done

now_ms() { date +%s%3N; }
gateways() { pgrep -c -f "rserpool gateway --registrar $asap" || true; }
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
seconds=$((UPGRADES * 3 + 12))
"$bin/http-chaos" load --target 127.0.0.1:18300 --connections "$CONNECTIONS" --seconds "$seconds" \
    --samples "$work/samples" > "$work/load.out" & http_load=$!
"$bin/session-load" run --target 127.0.0.1:18302 --dns 127.0.0.1:18303 --chatty "$CHATTY" \
    --idle "$IDLE" --seconds "$seconds" --gaps "$work/gaps" > "$work/sessions.out" & session_load=$!
sleep 5
: > "$work/upgrades"
for round in $(seq "$UPGRADES"); do
    old=$(cat "$pid_file")
    start=$(now_ms)
    kill -USR2 "$old"
    until [ "$(cat "$pid_file" 2>/dev/null)" != "$old" ] && [ -s "$pid_file" ]; do sleep 0.005; done
    serving=$(now_ms)
    # Gone: no such process, or a zombie nobody has reaped yet (an upgraded process's
    # parent is the one before it, which has exited).
    while kill -0 "$old" 2>/dev/null && ! grep -q ') Z ' "/proc/$old/stat" 2>/dev/null; do sleep 0.005; done
    gone=$(now_ms)
    new=$(cat "$pid_file")
    echo "$start $serving $gone $(gateways) $(rss_kib "$new")" >> "$work/upgrades"
    [ "$round" = 1 ] && first_rss=$(rss_kib "$new")
    sleep 1
done
last_rss=$(rss_kib "$(cat "$pid_file")")
wait "$http_load" "$session_load"
quantiles() { sort -n | awk '{ v[NR] = $1 } END { p50 = int(NR * 0.5 + 0.5); p99 = int(NR * 0.99 + 0.5); if (p50 < 1) p50 = 1; if (p99 < 1) p99 = 1; printf "p50 %s, p99 %s, max %s", v[p50], v[p99], v[NR] }'; }
# Per upgrade: the longest stall of a chatty session whose answer came in its window
# (SIGUSR2 to the old process gone, plus 100 ms), and the anchor before the first.
awk '
    FNR == NR { s[NR] = $1; e[NR] = $3 + 100; n = NR; next }
    { for (i = 1; i <= n; i++) if ($1 >= s[i] && $1 <= e[i] && $2 > worst[i]) worst[i] = $2
      sample[++samples] = $1; gap[samples] = $2 }
    END {
        span = 0; for (i = 1; i <= n; i++) span += e[i] - s[i]; span /= n
        anchor = 0
        for (r = 1; r <= samples; r++) if (sample[r] >= s[1] - span && sample[r] < s[1] && gap[r] > anchor) anchor = gap[r]
        for (i = 1; i <= n; i++) printf "stall %d\n", worst[i] + 0
        printf "anchor %d\n", anchor
    }' "$work/upgrades" "$work/gaps" > "$work/stalls"
failed=$(awk '$3 != 200 { f++ } END { print f + 0 }' "$work/samples")
requests=$(wc -l < "$work/samples")
echo "$UPGRADES upgrades under $CHATTY chatty + $IDLE idle TCP sessions, DNS queries and $CONNECTIONS keep-alive HTTP connections"
echo "SIGUSR2 to the new process serving (ms): $(awk '{ print $2 - $1 }' "$work/upgrades" | quantiles)"
echo "SIGUSR2 to the old process gone (ms):    $(awk '{ print $3 - $1 }' "$work/upgrades" | quantiles)"
echo "client-visible stall of a chatty session in an upgrade's window (ms): $(grep '^stall' "$work/stalls" | cut -d' ' -f2 | quantiles); the same span before the first upgrade: $(grep '^anchor' "$work/stalls" | cut -d' ' -f2) ms"
echo "gateway processes after each upgrade: $(awk '{ print $4 }' "$work/upgrades" | sort -u | tr '\n' ' ')"
echo "RSS of the gateway after the first upgrade: ${first_rss} KiB, after the last: ${last_rss} KiB ($(awk -v a="$first_rss" -v b="$last_rss" 'BEGIN { printf "%+.1f %%", (b - a) * 100 / a }'))"
cat "$work/sessions.out"
echo "HTTP: $requests requests, $failed failed, $(awk '{ print $6 }' "$work/load.out") connections opened for $CONNECTIONS keep-alive clients"
