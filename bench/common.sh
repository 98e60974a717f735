# Shared by the gateway benchmarks (sourced): waiting for ready lines, and a registrar
# with one `rserpool pe` agent per backend. Needs $bin, $work and the array pids.

# ready FILE TEXT: waits (10 s) for TEXT in FILE.
ready() {
    for _ in $(seq 100); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "no '$2' in $1" >&2; cat "$1" >&2; exit 1
}

# start_pool POOL PORT...: a registrar (its ASAP address in $asap) and an agent
# registering 127.0.0.1:PORT in POOL for each port.
start_pool() {
    local pool=$1; shift
    "$bin/rserpool" registrar --asap 127.0.0.1:0 --enrp 127.0.0.1:0 --announce off --enrp-multicast off \
        --log-level warn,rserpool::registrar=info 2>"$work/registrar.log" & pids+=($!)
    ready "$work/registrar.log" ready
    asap=$(grep -o 'asap=[0-9.:]*' "$work/registrar.log" | cut -d= -f2)
    for port in "$@"; do
        "$bin/rserpool" pe --pool "$pool" --backend 127.0.0.1:"$port" --registrar "$asap" --health tcp \
            2>"$work/pe-$port.log" & pids+=($!)
    done
}
