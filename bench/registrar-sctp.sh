#!/usr/bin/env bash
# Our registrar against rsplib's rspregistrar over kernel SCTP, inside the SCTP VM
# (../shared/tools/sctpvm: this kernel has no SCTP; the VM runs under QEMU, usually
# without KVM, so absolute rates are low and only the ratios mean something).
# Each round runs rspregistrar and ours one after the other (alternating), each alone on
# the VM's CPU 0 (ours on one tokio thread), with the same load generator
# (bench/src/bin/registrar-load.rs --sctp, PPID 11) on CPU 1:
#   registrations: PES PEs in one Round Robin pool, one per association (as rsplib's
#                  PEs), each re-registering as soon as the last one was answered;
#   resolutions:   the same PES PEs registered once and held (answering keep-alives) by
#                  one generator, while another keeps ASSOCS associations x IN_FLIGHT
#                  handle resolutions in flight.
# Printed per run: the rate, the registrar's CPU-seconds (user and system, from
# /proc/PID/stat over the measured period) per 1 000 requests, the requests per
# CPU-second, and our ratio to rspregistrar for both (per CPU-second is the figure
# that counts: under emulation neither registrar may saturate its CPU).
#   bench/registrar-sctp.sh [ROUNDS] [SECONDS] [PES] [ASSOCS] [IN_FLIGHT]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}; SECONDS_=${2:-5}; PES=${3:-1000}; ASSOCS=${4:-4}; IN_FLIGHT=${5:-8}

if [ "${SCTPVM:-}" != 1 ]; then
    vm=../shared/tools/sctpvm
    [ -x "$vm/run" ] || { echo "needs $vm (kernel SCTP in a VM)" >&2; exit 1; }
    cargo build --release --quiet -p rserpool -p rserpool-bench
    command -v rspregistrar >/dev/null || {
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsplib-registrar >/dev/null
    }
    "$vm/build" >/dev/null
    echo "== SCTP VM: $(nproc) vCPUs (QEMU), registrars on CPU 0, load on CPU 1"
    exec "$vm/run" --timeout $((300 + ROUNDS * (SECONDS_ + 15) * 4)) --cpus 2 --mem 2048 \
        --addr 192.0.2.1/24 -- bash "$0" "$@"
fi

# In the VM. The binaries are copied into the guest's RAM: read through 9p, their pages
# would be fetched again through the emulator whenever dropped.
work=$(mktemp -d)
cp target/release/rserpool target/release/registrar-load "$work/"
bin=$work
A=192.0.2.1
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
hz=$(getconf CLK_TCK)
printf 'registrar:\n  limits:\n    max_connections: 100000\n    max_connections_per_host: 100000\n    max_handle_resolutions_per_second: null\n' \
    >"$work/registrar.yaml"

# listening PORT: waits (30 s) until an SCTP endpoint listens on PORT.
listening() {
    for _ in $(seq 300); do
        awk -v p="$1" 'NR > 1 && $6 == p {found = 1} END {exit !found}' /proc/net/sctp/eps && return 0
        sleep 0.1
    done
    echo "nothing listens on SCTP port $1" >&2; exit 1
}

# registrar IMPL ASAP-PORT: starts rspregistrar or ours on CPU 0; its PID in $registrar_pid.
registrar() {
    local impl=$1 port=$2 log=$work/registrar-$1-$2.log
    if [ "$impl" = rsplib ]; then
        taskset -c 0 rspregistrar "-asap=$A:$port" "-enrp=$A:$((port + 1))" -asapannounce=off \
            -enrpannounce=off -minaddressscope=loopback -logcolor=off -loglevel=1 >"$log" 2>&1 &
    else
        TOKIO_WORKER_THREADS=1 taskset -c 0 "$bin/rserpool" registrar --transport sctp \
            --asap "$A:$port" --enrp "$A:$((port + 1))" --announce off --enrp-multicast off \
            --config "$work/registrar.yaml" --log-level warn >"$log" 2>&1 &
    fi
    registrar_pid=$!
    pids+=("$registrar_pid")
    listening "$port"
}

# load OUT FLAGS...: runs the generator on CPU 1 and prints "rate user-ticks
# system-ticks seconds" for the measured period (the registrar's CPU from the
# generator's "measuring" line to its exit).
load() {
    local out=$1; shift
    taskset -c 1 "$bin/registrar-load" --sctp --pools 1 --round-robin --seconds "$SECONDS_" "$@" >"$out" &
    local gen=$!
    for _ in $(seq 600); do grep -q '^measuring' "$out" && break; sleep 0.05; done
    local before; before=$(awk '{print $14, $15}' "/proc/$registrar_pid/stat")
    wait "$gen"
    local after; after=$(awk '{print $14, $15}' "/proc/$registrar_pid/stat")
    local field=registrations/s
    [[ " $* " == *" --pus 0 "* ]] || field="handle resolutions/s"
    local rate; rate=$(awk -v f="$field" 'index($0, f ":") == 1 {print $NF}' "$out")
    local seconds; seconds=$(awk '/^measured for:/ {print $3}' "$out")
    echo "$rate $before $after $seconds"
}

# report ROUND IMPL RUN RATE U0 S0 U1 S1 SECONDS: one line; sets $per_cpu_s.
report() {
    local requests; requests=$(awk -v r="$4" -v s="$9" 'BEGIN {print r * s}')
    per_cpu_s=$(awk -v n="$requests" -v u="$(($7 - $5))" -v s="$(($8 - $6))" -v hz="$hz" \
        'BEGIN {c = (u + s) / hz; printf "%.0f", (c > 0 ? n / c : 0)}')
    awk -v round="$1" -v impl="$2" -v run="$3" -v rate="$4" -v n="$requests" -v u="$(($7 - $5))" \
        -v s="$(($8 - $6))" -v hz="$hz" -v pcs="$per_cpu_s" -v secs="$9" 'BEGIN {
        printf "%-5s %-7s %-14s %9.0f %8.3f %8.3f %6.0f%% %10s\n", round, impl, run, rate,
            1000 * u / hz / n, 1000 * s / hz / n, 100 * (u + s) / hz / secs, pcs }'
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}'; }

echo "== $ROUNDS rounds, ${SECONDS_} s measured per run; registrations: $PES PEs, one per association,"
echo "   closed loop; resolutions: $ASSOCS associations x $IN_FLIGHT in flight, $PES PEs held"
printf '%-5s %-7s %-14s %9s %8s %8s %7s %10s\n' round impl run rate/s "user ms" "sys ms" CPU "per CPU-s"
printf '%-5s %-7s %-14s %9s %8s %8s %7s %10s\n' "" "" "" "" "/1000" "/1000" "" ""
declare -A rate cpu
reg_rate=(); reg_cpu=(); res_rate=(); res_cpu=()
port=20000
for r in $(seq "$ROUNDS"); do
    for impl in rsplib ours; do
        registrar "$impl" "$port"
        read -r -a m <<<"$(load "$work/reg.out" --registrar "$A:$port" --pes "$PES" --interval-ms 0 --pus 0)"
        report "$r" "$impl" registrations "${m[@]}"
        rate[$impl-reg]=${m[0]}; cpu[$impl-reg]=$per_cpu_s
        kill "$registrar_pid"; wait "$registrar_pid" 2>/dev/null || true
        port=$((port + 2))

        registrar "$impl" "$port"
        taskset -c 1 "$bin/registrar-load" --sctp --pools 1 --round-robin --registrar "$A:$port" \
            --pes "$PES" --pes-per-association 10 --interval-ms 60000 --register-only >"$work/held.out" &
        held=$!; pids+=("$held")
        for _ in $(seq 600); do grep -q '^registered' "$work/held.out" && break; sleep 0.1; done
        grep -q '^registered' "$work/held.out" || { echo "the $PES PEs were not registered" >&2; exit 1; }
        read -r -a m <<<"$(load "$work/res.out" --registrar "$A:$port" --pes 0 --pus "$ASSOCS" --in-flight "$IN_FLIGHT")"
        report "$r" "$impl" resolutions "${m[@]}"
        rate[$impl-res]=${m[0]}; cpu[$impl-res]=$per_cpu_s
        kill "$held" "$registrar_pid"; wait "$held" "$registrar_pid" 2>/dev/null || true
        port=$((port + 2))
    done
    reg_rate+=("$(ratio "${rate[ours-reg]}" "${rate[rsplib-reg]}")")
    reg_cpu+=("$(ratio "${cpu[ours-reg]}" "${cpu[rsplib-reg]}")")
    res_rate+=("$(ratio "${rate[ours-res]}" "${rate[rsplib-res]}")")
    res_cpu+=("$(ratio "${cpu[ours-res]}" "${cpu[rsplib-res]}")")
done
echo "ours/rspregistrar registrations/s:               ${reg_rate[*]} (median $(printf '%s\n' "${reg_rate[@]}" | median))"
echo "ours/rspregistrar registrations per CPU-second:  ${reg_cpu[*]} (median $(printf '%s\n' "${reg_cpu[@]}" | median))"
echo "ours/rspregistrar resolutions/s:                 ${res_rate[*]} (median $(printf '%s\n' "${res_rate[@]}" | median))"
echo "ours/rspregistrar resolutions per CPU-second:    ${res_cpu[*]} (median $(printf '%s\n' "${res_cpu[@]}" | median))"
