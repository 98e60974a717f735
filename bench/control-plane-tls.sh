#!/usr/bin/env bash
# What TLS with mutual authentication (RFC 5355) costs the registrar, measured side by
# side with plain TCP in the same run: one release registrar, loaded by
# bench/src/bin/registrar-load.rs: PES PEs re-registering in a closed loop
# (registrations/s), then PUS pool users resolving in a closed loop next to PES PEs
# re-registering every 250 ms (rsplib's load point; handle resolutions/s). Every
# association's handshake is done before its measured period. Rounds alternate plain
# and TLS; the ratio TLS/plain is taken per round and its median printed.
# Then 1 000 PEs (one association each) held by the load generator: the registrar is
# killed (SIGKILL) and started again on the same ports; printed is the time from the
# loss to every PE registered again (the PEs reconnect as the `pe` agent's hunt does,
# after 250 ms doubling to 5 s), plain and TLS.
#   bench/control-plane-tls.sh [ROUNDS] [SECONDS] [PES] [PUS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}; SECONDS_=${2:-5}; PES=${3:-1000}; PUS=${4:-2000}
cargo build --release --quiet -p rserpool -p rserpool-bench
source bench/common.sh

pki=$work/pki
"$bin/rserpool" cert ca --dir "$pki" >/dev/null
"$bin/rserpool" cert issue --dir "$pki" --name bench-registrar --registrar-id 0x1 >/dev/null
"$bin/rserpool" cert issue --dir "$pki" --name bench-pe --pe '*' >/dev/null
"$bin/rserpool" cert issue --dir "$pki" --name bench-pu --pu '*' >/dev/null
printf 'registrar:\n  limits:\n    max_connections: 100000\n' > "$work/registrar.yaml"

# registrar MODE ASAP ENRP LOG: starts a registrar (plain or tls) and waits for it.
registrar() {
    local mode=$1 asap=$2 enrp=$3 log=$4 tls=()
    [ "$mode" = tls ] && tls=(--tls-cert "$pki/bench-registrar.pem" --tls-key "$pki/bench-registrar-key.pem" --tls-ca "$pki/ca.pem")
    setsid "$bin/rserpool" registrar --asap "$asap" --enrp "$enrp" --announce off --enrp-multicast off \
        --config "$work/registrar.yaml" --log-level warn,rserpool::registrar=info "${tls[@]}" 2>"$log" & pids+=($!)
    registrar_pid=$!
    ready "$log" ready
}

load_flags() { [ "$1" = tls ] && echo "--tls $pki" || true; }

# round MODE: two measured runs on one registrar: registrations in a closed loop (PES
# PEs, no pool users), then resolutions in a closed loop (PUS pool users, PES PEs
# re-registering every 250 ms); prints "registrations/s resolutions/s refused".
round() {
    local mode=$1 log=$work/round-$1.log registering resolving
    registrar "$mode" 127.0.0.1:0 127.0.0.1:0 "$log"
    local asap
    asap=$(grep -o 'asap=[0-9.:]*' "$log" | cut -d= -f2)
    # shellcheck disable=SC2046 # the flags of the mode
    registering=$("$bin/registrar-load" --registrar "$asap" --pes "$PES" --pus 0 --interval-ms 0 \
        --seconds "$SECONDS_" $(load_flags "$mode"))
    # shellcheck disable=SC2046 # the flags of the mode
    resolving=$("$bin/registrar-load" --registrar "$asap" --pes "$PES" --pus "$PUS" --interval-ms 250 \
        --seconds "$SECONDS_" $(load_flags "$mode"))
    kill "$registrar_pid"; wait "$registrar_pid" 2>/dev/null || true
    echo "$(awk '/^registrations\/s/ {print $2}' <<<"$registering") $(awk '/^handle resolutions\/s/ {print $3}' <<<"$resolving") $(awk '/^refused/ {s += $3} END {print s}' <<<"$registering$resolving")"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

echo "== closed loops: registrations/s of $PES PEs; handle resolutions/s of $PUS pool users (with $PES PEs every 250 ms); ${SECONDS_} s each"
printf '%-6s %-6s %16s %18s %8s\n' round mode registrations/s resolutions/s refused
reg_ratios=(); res_ratios=()
for r in $(seq "$ROUNDS"); do
    read -r plain_reg plain_res plain_refused <<<"$(round plain)"
    read -r tls_reg tls_res tls_refused <<<"$(round tls)"
    printf '%-6s %-6s %16s %18s %8s\n' "$r" plain "$plain_reg" "$plain_res" "$plain_refused"
    printf '%-6s %-6s %16s %18s %8s\n' "$r" tls "$tls_reg" "$tls_res" "$tls_refused"
    reg_ratios+=("$(awk -v t="$tls_reg" -v p="$plain_reg" 'BEGIN {printf "%.3f", t/p}')")
    res_ratios+=("$(awk -v t="$tls_res" -v p="$plain_res" 'BEGIN {printf "%.3f", t/p}')")
done
echo "TLS/plain registrations/s: ${reg_ratios[*]} (median $(printf '%s\n' "${reg_ratios[@]}" | median))"
echo "TLS/plain resolutions/s:   ${res_ratios[*]} (median $(printf '%s\n' "${res_ratios[@]}" | median))"

echo "== 1000 PEs registered again after a registrar restart (SIGKILL, same ports)"
for mode in plain tls; do
    log=$work/restart-$mode.log
    registrar "$mode" 127.0.0.1:0 127.0.0.1:0 "$log"
    asap=$(grep -o 'asap=[0-9.:]*' "$log" | cut -d= -f2)
    enrp=$(grep -o 'enrp=[0-9.:]*' "$log" | cut -d= -f2)
    # shellcheck disable=SC2046 # the flags of the mode
    "$bin/registrar-load" --registrar "$asap" --pes 1000 --register-only \
        $(load_flags "$mode") >"$work/load-$mode.out" & pids+=($!)
    load_pid=$!
    for _ in $(seq 300); do grep -q '^registered' "$work/load-$mode.out" && break; sleep 0.1; done
    first=$(head -n1 "$work/load-$mode.out")
    kill -9 "$registrar_pid"; wait "$registrar_pid" 2>/dev/null || true
    registrar "$mode" "$asap" "$enrp" "$log.2"
    for _ in $(seq 300); do [ "$(grep -c '^registered' "$work/load-$mode.out")" -ge 2 ] && break; sleep 0.1; done
    again=$(sed -n 2p "$work/load-$mode.out")
    echo "$mode: first $first; after the restart: ${again:-not all registered within 30 s}"
    kill "$load_pid" "$registrar_pid" 2>/dev/null || true
    wait "$load_pid" "$registrar_pid" 2>/dev/null || true
done
