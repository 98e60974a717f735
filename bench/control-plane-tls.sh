#!/usr/bin/env bash
# What TLS with mutual authentication (RFC 5355) costs the registrar, measured side by
# side with plain TCP in the same run: two release registrars, one plain and one TLS,
# run at the same time on CPU 0 (one tokio thread each, so each gets half of that core
# and both see the same machine at the same moment: this shared 2-core box drifts by a
# third between minutes), each loaded by its own bench/src/bin/registrar-load.rs on
# CPU 1 (so the generators' own TLS work does not come out of the registrars' CPU).
# Measured: PES PEs re-registering in a closed loop (registrations/s), then PUS pool
# users resolving in a closed loop next to PES PEs re-registering every 250 ms (rsplib's
# load point; handle resolutions/s). Every handshake is done before the measured
# period. Per round the ratio TLS/plain is taken; the medians are printed, and each
# registrar's share of CPU 0 (both must be saturated, about 50 %, for the ratio to be
# the cost per operation).
# Then 1 000 PEs (one association each) held by the load generator: the registrar is
# killed (SIGKILL) and started again on the same ports; printed is the time from the
# loss to every PE registered again (the PEs reconnect as the `pe` agent's hunt does,
# after 250 ms doubling to 5 s), plain and TLS.
# The same with the registrar upgraded in place (SIGUSR2) instead, and how many PEs it
# answers for a pool the moment it serves again (the restarted one starts empty).
#   bench/control-plane-tls.sh [ROUNDS] [SECONDS] [PES] [PUS]   (ONLY=restart: the last part)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}; SECONDS_=${2:-5}; PES=${3:-1000}; PUS=${4:-2000}
cargo build --release --quiet -p rserpool -p rserpool-bench
source bench/common.sh
need util-linux taskset
[ "$(nproc)" -ge 2 ] || { echo "needs 2 CPUs (registrars on CPU 0, load on CPU 1)" >&2; exit 1; }

pki=$work/pki
"$bin/rserpool" cert ca --dir "$pki" >/dev/null
"$bin/rserpool" cert issue --dir "$pki" --name bench-registrar --registrar-id 0x1 >/dev/null
"$bin/rserpool" cert issue --dir "$pki" --name bench-pe --pe '*' >/dev/null
"$bin/rserpool" cert issue --dir "$pki" --name bench-pu --pu '*' >/dev/null
printf 'registrar:\n  limits:\n    max_connections: 100000\n    max_connections_per_host: 100000\n    max_handle_resolutions_per_second: null\n' > "$work/registrar.yaml"

# registrar MODE ASAP ENRP LOG [CPU]: starts a registrar (plain or tls; on one tokio
# thread pinned to CPU if given) and waits for it; its PID is in $registrar_pid.
registrar() {
    local mode=$1 asap=$2 enrp=$3 log=$4 cpu=${5:-} tls=() pin=()
    [ "$mode" = tls ] && tls=(--tls-cert "$pki/bench-registrar.pem" --tls-key "$pki/bench-registrar-key.pem" --tls-ca "$pki/ca.pem")
    [ -n "$cpu" ] && pin=(env TOKIO_WORKER_THREADS=1 taskset -c "$cpu")
    setsid "${pin[@]}" "$bin/rserpool" registrar --asap "$asap" --enrp "$enrp" --announce off --enrp-multicast off \
        --config "$work/registrar.yaml" --log-level warn,rserpool::registrar=info --pid-file "$log.pid" "${tls[@]}" 2>"$log" & pids+=($!)
    registrar_pid=$!
    ready "$log" ready
}

load_flags() { [ "$1" = tls ] && echo "--tls $pki" || true; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# measure FLAGS...: both registrars loaded at once by a generator each (CPU 1) with
# FLAGS; prints "plain-rate tls-rate plain-cpu% tls-cpu% refused", the rate being
# registrations/s with --pus 0, handle resolutions/s otherwise, and the CPU shares over
# the measured seconds (after the generators' 2 s warm-up).
measure() {
    local field=registrations/s
    [[ " $* " == *" --pus 0 "* ]] || field="handle resolutions/s"
    local mode out=() gen=() before=() after=()
    for mode in plain tls; do
        # shellcheck disable=SC2046 # the flags of the mode
        setsid taskset -c 1 "$bin/registrar-load" --registrar "${asap[$mode]}" "$@" --seconds "$SECONDS_" \
            $(load_flags "$mode") >"$work/load-$mode.out" & gen+=($!)
    done
    sleep 2.5
    before=("$(cpu_ticks "${registrar[plain]}")" "$(cpu_ticks "${registrar[tls]}")")
    sleep $((SECONDS_ - 1))
    after=("$(cpu_ticks "${registrar[plain]}")" "$(cpu_ticks "${registrar[tls]}")")
    wait "${gen[@]}"
    local hz; hz=$(getconf CLK_TCK)
    for mode in plain tls; do
        out+=("$(awk -v f="$field" 'index($0, f ":") == 1 {print $NF}' "$work/load-$mode.out")")
    done
    out+=("$(awk -v a="${before[0]}" -v b="${after[0]}" -v s="$((SECONDS_ - 1))" -v hz="$hz" 'BEGIN {printf "%.0f%%", 100 * (b - a) / hz / s}')")
    out+=("$(awk -v a="${before[1]}" -v b="${after[1]}" -v s="$((SECONDS_ - 1))" -v hz="$hz" 'BEGIN {printf "%.0f%%", 100 * (b - a) / hz / s}')")
    out+=("$(cat "$work"/load-*.out | awk '/^refused/ {s += $3} END {print s}')")
    echo "${out[*]}"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
ratio() { awk -v t="$2" -v p="$1" 'BEGIN {printf "%.3f", t/p}'; }

declare -A asap registrar
if [ "${ONLY:-all}" != restart ]; then
echo "== side by side on CPU 0 (one thread each), generators on CPU 1; ${SECONDS_} s measured per run"
echo "   registrations: $PES PEs in a closed loop; resolutions: $PUS pool users in a closed loop, $PES PEs every 250 ms"
printf '%-6s %-22s %10s %10s %7s %7s %8s %7s\n' round run plain tls plain% tls% refused ratio
reg_ratios=(); res_ratios=()
for r in $(seq "$ROUNDS"); do
    for mode in plain tls; do
        registrar "$mode" 127.0.0.1:0 127.0.0.1:0 "$work/round-$mode.log" 0
        registrar[$mode]=$registrar_pid
        asap[$mode]=$(grep -o 'asap=[0-9.:]*' "$work/round-$mode.log" | cut -d= -f2)
    done
    read -r p t pc tc refused <<<"$(measure --pes "$PES" --pus 0 --interval-ms 0)"
    reg_ratios+=("$(ratio "$p" "$t")")
    printf '%-6s %-22s %10s %10s %7s %7s %8s %7s\n' "$r" registrations/s "$p" "$t" "$pc" "$tc" "$refused" "${reg_ratios[-1]}"
    read -r p t pc tc refused <<<"$(measure --pes "$PES" --pus "$PUS" --interval-ms 250)"
    res_ratios+=("$(ratio "$p" "$t")")
    printf '%-6s %-22s %10s %10s %7s %7s %8s %7s\n' "$r" "handle resolutions/s" "$p" "$t" "$pc" "$tc" "$refused" "${res_ratios[-1]}"
    kill "${registrar[plain]}" "${registrar[tls]}"
    wait "${registrar[plain]}" "${registrar[tls]}" 2>/dev/null || true
done
echo "TLS/plain registrations/s: ${reg_ratios[*]} (median $(printf '%s\n' "${reg_ratios[@]}" | median))"
echo "TLS/plain resolutions/s:   ${res_ratios[*]} (median $(printf '%s\n' "${res_ratios[@]}" | median))"
fi

# resolved MODE ADDRESS: how many PEs the registrar at ADDRESS answers for BenchPool0
# (100 of the 1 000 when all are there), asked once, at once.
resolved() {
    local tls=()
    [ "$1" = tls ] && tls=(--tls-cert "$pki/bench-pu.pem" --tls-key "$pki/bench-pu-key.pem" --tls-ca "$pki/ca.pem")
    local answer
    answer=$("$bin/rserpool" resolve BenchPool0 --registrar "$2" --count 1000 --json --timeout 5s "${tls[@]}" 2>/dev/null) || true
    awk -F'"id"' 'NF > 1 {n += NF - 1} END {print n + 0}' <<<"$answer"
}

echo "== 1000 PEs held by the load generator: the registrar restarted (SIGKILL, then started"
echo "   again on the same ports) against upgraded in place (SIGUSR2, same binary), same run"
printf '%-6s %-8s %34s %40s\n' mode how "BenchPool0 PEs when it serves again" "all PEs registered again after the loss"
for mode in plain tls; do
    for how in restart upgrade; do
        log=$work/$how-$mode.log
        registrar "$mode" 127.0.0.1:0 127.0.0.1:0 "$log"
        address=$(grep -o 'asap=[0-9.:]*' "$log" | cut -d= -f2)
        enrp_address=$(grep -o 'enrp=[0-9.:]*' "$log" | cut -d= -f2)
        # shellcheck disable=SC2046 # the flags of the mode
        "$bin/registrar-load" --registrar "$address" --pes 1000 --register-only \
            $(load_flags "$mode") >"$work/load-$mode.out" & pids+=($!)
        load_pid=$!
        for _ in $(seq 300); do grep -q '^registered' "$work/load-$mode.out" && break; sleep 0.1; done
        if [ "$how" = restart ]; then
            kill -9 "$registrar_pid"; wait "$registrar_pid" 2>/dev/null || true
            registrar "$mode" "$address" "$enrp_address" "$log.2"
        else
            kill -USR2 "$registrar_pid"
            for _ in $(seq 1000); do [ "$(cat "$log.pid")" != "$registrar_pid" ] && break; sleep 0.01; done
            registrar_pid=$(cat "$log.pid"); pids+=("$registrar_pid")
        fi
        count=$(resolved "$mode" "$address")
        for _ in $(seq 300); do [ "$(grep -c '^registered' "$work/load-$mode.out")" -ge 2 ] && break; sleep 0.1; done
        again=$(sed -n 2p "$work/load-$mode.out")
        printf '%-6s %-8s %34s %40s\n' "$mode" "$how" "$count of 100" "${again:-not all within 30 s}"
        kill "$load_pid" "$registrar_pid" 2>/dev/null || true
        wait "$load_pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$registrar_pid" 2>/dev/null || break; sleep 0.05; done
    done
done
