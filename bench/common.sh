# Shared by the gateway benchmarks (sourced, from the repository root): the Debian
# tools they need, a work directory, the processes to stop on exit (add pids to `pids`,
# pid files to `pid_files`), waiting for ready lines, and a registrar with one
# `rserpool pe` agent per backend.

# need "PACKAGES" COMMAND...: installs the Debian PACKAGES unless every COMMAND is there.
need() {
    local packages=$1 tool; shift
    for tool in "$@"; do
        command -v "$tool" >/dev/null && continue
        # shellcheck disable=SC2086 # a list of package names
        sudo -n apt-get install -y $packages >/dev/null 2>&1 || apt-get install -y $packages >/dev/null
        return
    done
}

# Servers run in a session of their own (`setsid`), as HAProxy (-D) and nginx (daemons)
# do. With the kernel's autogroup scheduling (/proc/sys/kernel/sched_autogroup_enabled,
# on here) a session is one scheduling entity: a server left in this script's session
# shares one CPU share with the load generator. It cost the gateway a quarter of its
# throughput next to HAProxy's (wrk -c64: 8 169 involuntary context switches in 4 s
# against HAProxy's 715; 2 030 in its own session). setsid does not fork here (a
# script's background jobs are no process-group leaders), so $! is the server's PID.

ulimit -n 65536 2>/dev/null || true
bin=target/release
work=$(mktemp -d)
pids=()
pid_files=()
cleanup() {
    kill "${pids[@]}" 2>/dev/null || true
    for file in "${pid_files[@]}"; do
        [ -f "$file" ] && kill "$(cat "$file")" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# ready FILE TEXT: waits (10 s) for TEXT in FILE.
ready() {
    for _ in $(seq 100); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "no '$2' in $1" >&2; cat "$1" >&2; exit 1
}

# start_pool POOL PORT...: a registrar (its ASAP address in $asap) and an agent
# registering 127.0.0.1:PORT in POOL for each port.
start_pool() {
    local pool=$1; shift
    setsid "$bin/rserpool" registrar --asap 127.0.0.1:0 --enrp 127.0.0.1:0 --announce off --enrp-multicast off \
        --log-level warn,rserpool::registrar=info 2>"$work/registrar.log" & pids+=($!)
    ready "$work/registrar.log" ready
    asap=$(grep -o 'asap=[0-9.:]*' "$work/registrar.log" | cut -d= -f2)
    for port in "$@"; do
        setsid "$bin/rserpool" pe --pool "$pool" --backend 127.0.0.1:"$port" --registrar "$asap" --health tcp \
            2>"$work/pe-$port.log" & pids+=($!)
    done
}

# web_gateway_config [LISTENER...]: the HTTP benchmarks' gateway configuration, written
# to $work/gateway.yaml: 127.0.0.1:18089 (and each LISTENER, a YAML list item) routed to
# WebPool at the registrar of start_pool.
web_gateway_config() {
    {
        echo "pool_user:"
        echo "  registrars: [$asap]"
        echo "gateway:"
        echo "  http:"
        echo "    - listen: 127.0.0.1:18089"
        echo "      routes: [{pool: WebPool}]"
        local listener
        for listener in "$@"; do echo "$listener"; done
        echo "log:"
        echo "  level: warn,rserpool::gateway=info"
    } > "$work/gateway.yaml"
}

# cpu_ticks PID: the process's user + system time so far, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# start_knot [CONFIG LINE...]: Knot DNS with ../shared/baselines/knot.conf (127.0.0.1:15354)
# serving echopool.pool.example as a static zone of 8 A records, each CONFIG LINE
# appended to its configuration; KNOT_UDP_WORKERS UDP workers (default 1).
start_knot() {
    mkdir -p "$work/knot"
    {
        echo '$ORIGIN pool.example.'; echo '$TTL 0'
        echo '@ IN SOA ns.pool.example. admin.pool.example. 1 3600 600 86400 0'
        echo '@ IN NS ns.pool.example.'; echo 'ns IN A 127.0.0.1'
        for i in $(seq 8); do echo "echopool IN A 10.0.0.$i"; done
    } > "$work/knot/pool.example.zone"
    {
        sed -e "s#/tmp/baselines/knot#$work/knot#g" \
            -e "s/udp-workers: 1/udp-workers: ${KNOT_UDP_WORKERS:-1}/" ../shared/baselines/knot.conf
        local line
        for line in "$@"; do echo "$line"; done
    } > "$work/knot.conf"
    setsid knotd -c "$work/knot.conf" 2>"$work/knotd.log" & pids+=($!)
}

# start_echopool_agent COUNT [FIELDS]: one `rserpool pe` agent registering COUNT PEs of
# echopool at $asap (127.0.0.1, ports 20000 up: a registrar accepts only the agent's
# own address; no health checks, so nothing needs to listen there), each service
# entry with the extra FIELDS (`, key: value` pairs).
start_echopool_agent() {
    local count=$1 fields=${2:-} i
    {
        echo "pe:"; echo "  registrars: [$asap]"; echo "  services:"
        for i in $(seq 0 $((count - 1))); do
            echo "    - {pool: echopool, backend: 127.0.0.1:$((20000 + i)), health: none$fields}"
        done
        echo "log:"; echo "  level: warn"
    } > "$work/agent.yaml"
    setsid "$bin/rserpool" pe --config "$work/agent.yaml" 2>"$work/agent.log" & pids+=($!)
}

# dns_gateway_config LISTEN [LINE...]: $work/gateway.yaml with one DNS listener at
# LISTEN for zone pool.example. (8 PEs per answer) resolving at $asap, each LINE added
# to the listener.
dns_gateway_config() {
    local listen=$1 line; shift
    {
        echo "pool_user:"; echo "  registrars: [$asap]"
        echo "gateway:"; echo "  dns:"
        echo "    - listen: $listen"; echo "      zone: pool.example."; echo "      answer_count: 8"
        for line in "$@"; do echo "      $line"; done
        echo "log:"; echo "  level: warn,rserpool::gateway=info"
    } > "$work/gateway.yaml"
}
