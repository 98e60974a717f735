#!/usr/bin/env bash
# Adaptive-policy benchmark: a Least Used pool of three CalcApp PEs of skewed capacity
# (250 000, 500 000 and 2 000 000 calculations per second: 1:2:8) behind the TCP
# gateway, loaded by clients submitting CalcApp jobs (bench/src/bin/calcapp-load.rs).
# The anchor is the same pool whose PEs register load 0 (`--no-load-reports`: the
# policy then sees every PE idle and spreads the jobs evenly); against it the pool
# whose PEs report their running jobs / max jobs (`loads`), the same with Least Used
# with Degradation 10 % (`degradation`: each choice counts against a PE until its next
# report, so the jobs started within one report interval do not all go to the PE
# that was least loaded at its start), and Least Used with the gateway's
# `least_sessions` on top (`sessions`). Prints each run's mean, median and 95th
# percentile job handling time and the ratio of means to the anchor (below 1:
# faster). The rsplib papers' measure: handling time under heterogeneous capacity.
#   bench/adaptive.sh [SECONDS] [CLIENTS]   (ROUNDS=1: runs per variant, alternated)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_=${1:-20}; CLIENTS=${2:-12}; ROUNDS=${ROUNDS:-1}
JOB_SIZE=${JOB_SIZE:-500000}; THINK_MS=${THINK_MS:-200}
# shellcheck source=bench/common.sh
. bench/common.sh
cargo build --release --quiet -p rserpool -p rserpool-bench

setsid "$bin/rserpool" registrar --asap 127.0.0.1:0 --enrp 127.0.0.1:0 --announce off --enrp-multicast off \
    --log-level warn,rserpool::registrar=info 2>"$work/registrar.log" & pids+=($!)
ready "$work/registrar.log" ready
asap=$(grep -o 'asap=[0-9.:]*' "$work/registrar.log" | cut -d= -f2)

# run VARIANT ROUND: one pool and gateway, the load, then both stopped; prints the
# load's line.
run() {
    local variant=$1 round=$2 pool="Adaptive-$1-$2" reports=() least=false policy=LeastUsed listen log
    [ "$variant" = zero ] && reports=(--no-load-reports)
    [ "$variant" = sessions ] && least=true
    [ "$variant" = degradation ] && policy=LeastUsedDegradation:0.1
    local run_pids=()
    for capacity in 250000 500000 2000000; do
        setsid "$bin/rserpool" pe --serve calcapp --pool "$pool" --policy "$policy" --registrar "$asap" \
            --max-sessions 10 --calculations-per-second "$capacity" --reregistration-interval 5s \
            "${reports[@]}" --log-level warn 2>"$work/pe-$pool-$capacity.log" & run_pids+=($!)
    done
    cat > "$work/$pool.yaml" <<CFG
pool_user:
  registrars: [$asap]
gateway:
  tcp:
    - listen: 127.0.0.1:0
      pool: $pool
      slow_start: 0s
      least_sessions: $least
CFG
    log="$work/gateway-$pool.log"
    setsid "$bin/rserpool" gateway --config "$work/$pool.yaml" --log-level warn,rserpool::gateway=info 2>"$log" & run_pids+=($!)
    ready "$log" ready
    listen=$(grep -o 'tcp=[0-9.:]*' "$log" | cut -d= -f2)
    until "$bin/rserpool" resolve "$pool" --registrar "$asap" --count 10 | grep -q "3 pool element"; do sleep 0.2; done
    "$bin/calcapp-load" run --target "$listen" --clients "$CLIENTS" --seconds "$SECONDS_" \
        --job-size "$JOB_SIZE" --think-ms "$THINK_MS"
    kill "${run_pids[@]}" 2>/dev/null || true
    wait "${run_pids[@]}" 2>/dev/null || true
}

field() { grep -o "$1=[0-9.]*" | cut -d= -f2; }
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
declare -A means
echo "== $CLIENTS clients, jobs of $JOB_SIZE calculations, think $THINK_MS ms, $SECONDS_ s per run"
for round in $(seq "$ROUNDS"); do
    for variant in zero loads degradation sessions; do
        out=$(run "$variant" "$round")
        echo "  $variant (round $round): $out"
        means[$variant]+="$(echo "$out" | field mean_ms) "
    done
done
anchor=$(echo "${means[zero]}" | tr ' ' '\n' | grep . | median)
for variant in loads degradation sessions; do
    mean=$(echo "${means[$variant]}" | tr ' ' '\n' | grep . | median)
    awk -v v="$variant" -v m="$mean" -v a="$anchor" \
        'BEGIN { printf "%s: mean handling time %.0f ms, %.2fx the load-0 pool'"'"'s %.0f ms\n", v, m, m / a, a }'
done
