#!/usr/bin/env bash
# DNS gateway benchmark: dnsperf (Debian) against the gateway's DNS listener (one thread)
# answering A queries for a 1 000-PE pool (8 PEs per answer, chosen by the pool's policy
# for every query) and against Knot DNS (one UDP worker, ../shared/baselines/knot.conf)
# serving an equivalent static zone (8 A records); same machine, same load. Each figure
# is the median of ROUNDS alternating runs; prints queries/s, latency and the ratio.
#   bench/dns.sh [SECONDS]        (ROUNDS=3, CLIENTS=4; THREADS=2: then again with two
#   gateway worker threads and two Knot UDP workers, and the ratios to one printed)
# (Knot, not NSD: NSD drops queries on this machine, see ../shared/baselines/README.md.)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_=${1:-5}; ROUNDS=${ROUNDS:-3}; CLIENTS=${CLIENTS:-4}; THREADS=${THREADS:-1}
# shellcheck source=bench/common.sh
. bench/common.sh
need "dnsperf knot" dnsperf knotd
need dnsutils dig
cargo build --release --quiet -p rserpool

# A registrar, one agent registering 1 000 PEs.
start_pool echopool    # the registrar; the PEs come from the agent below
enrp=$(grep -o 'enrp=[0-9.:]*' "$work/registrar.log" | cut -d= -f2)
start_echopool_agent 1000 ", reregistration_interval: 30s"
until "$bin/rserpool" dump --registrar "$enrp" 2>/dev/null | grep -q "pool echopool (1000 PE)"; do sleep 0.5; done
# dnsperf is one client: no response rate limit here.
dns_gateway_config 127.0.0.1:15353 "rate_limit: 0"

echo "echopool.pool.example A" > "$work/queries"
measure() { # port -> "queries/s avg_latency_ms lost"
    dnsperf -s 127.0.0.1 -p "$1" -d "$work/queries" -c "$CLIENTS" -l "$SECONDS_" -q 200 2>/dev/null | awk '
        /Queries lost:/ { lost = $3 } /Queries per second:/ { qps = $4 }
        /Average Latency/ { lat = $4 * 1000 }
        END { printf "%.0f %.3f %s\n", qps, lat, lost }'
}
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# run_with N: the gateway on N tokio worker threads and Knot with N UDP workers,
# ROUNDS alternating runs; the medians in $gm and $km.
run_with() {
    local n=$1 g=() k=() gl=() kl=() out gateway knot
    KNOT_UDP_WORKERS=$n start_knot; knot=$!
    TOKIO_WORKER_THREADS=$n setsid "$bin/rserpool" gateway --config "$work/gateway.yaml" 2>"$work/gateway-$n.log" & gateway=$!; pids+=($gateway)
    ready "$work/gateway-$n.log" ready
    until dig @127.0.0.1 -p 15353 +short echopool.pool.example A | grep -q '^127\.'; do sleep 0.2; done
    until dig @127.0.0.1 -p 15354 +short echopool.pool.example A | grep -q 10.0.0.1; do sleep 0.2; done
    for _ in $(seq "$ROUNDS"); do
        out=$(measure 15353); echo "  $n thread(s) gateway: $out (queries/s avg_ms lost)"; g+=("${out%% *}"); gl+=("$(echo "$out" | cut -d' ' -f2)")
        out=$(measure 15354); echo "  $n worker(s) knot:    $out (queries/s avg_ms lost)"; k+=("${out%% *}"); kl+=("$(echo "$out" | cut -d' ' -f2)")
    done
    local glm klm
    gm=$(printf '%s\n' "${g[@]}" | median); km=$(printf '%s\n' "${k[@]}" | median)
    glm=$(printf '%s\n' "${gl[@]}" | median); klm=$(printf '%s\n' "${kl[@]}" | median)
    echo "=> $n thread(s): A queries, 1 000-PE pool, 8 per answer (medians of $ROUNDS x ${SECONDS_} s, dnsperf -c $CLIENTS)"
    echo "   gateway $gm queries/s (avg ${glm} ms), Knot $km queries/s (avg ${klm} ms)"
    awk -v g="$gm" -v k="$km" 'BEGIN { printf "   gateway/Knot = %.2f\n", g / k }'
    echo "   gateway RSS: $(awk '/VmRSS/ {print $2, $3}' /proc/$gateway/status)"
    kill "$gateway" "$knot"; wait "$gateway" "$knot" 2>/dev/null || true
}

run_with 1; g1=$gm; k1=$km
if [ "$THREADS" -ge 2 ]; then
    run_with "$THREADS"; g2=$gm; k2=$km
    echo "=> $THREADS threads against one (same run): gateway $(awk -v a="$g2" -v b="$g1" 'BEGIN {printf "%.2f", a / b}')x," \
        "Knot $(awk -v a="$k2" -v b="$k1" 'BEGIN {printf "%.2f", a / b}')x;" \
        "gateway/Knot at $THREADS: $(awk -v g="$g2" -v k="$k2" 'BEGIN {printf "%.2f", g / k}')"
fi
