#!/usr/bin/env bash
# The HTTP gateway under an HTTP/2 body hold (release build, loopback): CONNECTIONS
# h2c connections open STREAMS POST streams each to a pool whose PE reads and never
# answers, send BODY bytes of each body and stay silent (bench/src/bin/h2-hold.rs).
# Two gateways run side by side in the same run against the same pools: the anchor
# holds every body for replay without a budget (max_held_body_bytes and
# max_held_body_bytes_per_connection at 1 GiB: what the gateway did before), the other
# runs the defaults (64 MiB per listener, 1 MiB per connection). Printed per gateway:
# RSS before, peak RSS during the hold and RSS 5 s after it ends, the bodies streamed
# on unheld (rserpool_http_bodies_not_held_total), and a legitimate client's GETs to
# another pool through the same listener meanwhile (answered, failed, slowest).
#   bench/h2-body-hold.sh [CONNECTIONS] [STREAMS] [BODY] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
CONNECTIONS=${1:-20}; STREAMS=${2:-100}; BODY=${3:-61440}; HOLD=${4:-12}
cargo build --release --quiet -p rserpool -p rserpool-bench
source bench/common.sh
need curl curl

setsid "$bin/h2-hold" sink --listen 127.0.0.1:0 >"$work/sink.out" & pids+=($!)
ready "$work/sink.out" listening
sink=$(grep -o '127.0.0.1:[0-9]*' "$work/sink.out")
setsid "$bin/rserpool" registrar --asap 127.0.0.1:0 --enrp 127.0.0.1:0 --announce off \
    --enrp-multicast off --log-level warn,rserpool::registrar=info 2>"$work/registrar.log" & pids+=($!)
ready "$work/registrar.log" ready
asap=$(grep -o 'asap=[0-9.:]*' "$work/registrar.log" | cut -d= -f2)
setsid "$bin/rserpool" pe --pool HoldPool --backend "$sink" --registrar "$asap" --health tcp \
    2>"$work/pe-hold.log" & pids+=($!)
setsid "$bin/rserpool" pe --serve http --pool WebPool --registrar "$asap" \
    2>"$work/pe-web.log" & pids+=($!)
for _ in $(seq 100); do
    [ "$("$bin/rserpool" resolve --registrar "$asap" HoldPool 2>/dev/null | grep -c .)" -ge 1 ] &&
        [ "$("$bin/rserpool" resolve --registrar "$asap" WebPool 2>/dev/null | grep -c .)" -ge 1 ] && break
    sleep 0.1
done

# gateway NAME [LISTENER LINES...]: a gateway whose HTTP listener routes /hold to
# HoldPool and the rest to WebPool; its listen and admin addresses in $listen, $admin.
gateway() {
    local name=$1; shift
    {
        echo "pool_user:"
        echo "  registrars: [$asap]"
        echo "gateway:"
        echo "  http:"
        echo "    - listen: 127.0.0.1:0"
        echo "      routes: [{pool: HoldPool, path: /hold}, {pool: WebPool}]"
        local line
        for line in "$@"; do echo "      $line"; done
        echo "log:"
        echo "  level: warn,rserpool::gateway=info"
    } > "$work/$name.yaml"
    setsid "$bin/rserpool" gateway --config "$work/$name.yaml" --admin 127.0.0.1:0 \
        2>"$work/$name.log" & pids+=($!)
    ready "$work/$name.log" ready
    eval "${name}_pid=$!"
    eval "${name}_listen=$(grep -o 'http=[0-9.:]*' "$work/$name.log" | head -1 | cut -d= -f2)"
    eval "${name}_admin=$(grep -o 'admin=[0-9.:]*' "$work/$name.log" | head -1 | cut -d= -f2)"
}
gateway unbudgeted "max_held_body_bytes: 1073741824" "max_held_body_bytes_per_connection: 1073741824"
gateway defaults

rss() { awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$1/status"; }

# hold NAME: the hold against one gateway, with a legitimate GET loop beside it.
hold() {
    local name=$1 pid listen admin before peak=0 now ok=0 failed=0 slowest=0 t
    pid=$(eval echo "\$${name}_pid"); listen=$(eval echo "\$${name}_listen")
    admin=$(eval echo "\$${name}_admin")
    curl -s -o /dev/null "http://$listen/" || true
    before=$(rss "$pid")
    "$bin/h2-hold" hold --target "$listen" --connections "$CONNECTIONS" --streams "$STREAMS" \
        --body-bytes "$BODY" --seconds "$HOLD" >"$work/hold-$name.out" &
    local load=$!
    while kill -0 "$load" 2>/dev/null; do
        now=$(rss "$pid"); [ "$now" -gt "$peak" ] && peak=$now
        t=$(curl -s -o /dev/null -m 5 -w '%{http_code} %{time_total}' "http://$listen/" || true)
        if [ "${t%% *}" = 200 ]; then
            ok=$((ok + 1))
            slowest=$(awk -v a="$slowest" -v b="${t#* }" 'BEGIN { print (b > a) ? b : a }')
        else
            failed=$((failed + 1))
        fi
        sleep 0.1
    done
    wait "$load"
    sleep 5
    echo "== $name"
    cat "$work/hold-$name.out"
    echo "gateway RSS before:    $before MiB"
    echo "gateway RSS peak:      $peak MiB"
    echo "gateway RSS after:     $(rss "$pid") MiB"
    echo "bodies not held:       $(curl -s "http://$admin/metrics" |
        awk '/^rserpool_http_bodies_not_held_total/ { s += $2 } END { print s + 0 }')"
    echo "legitimate GETs:       $ok answered, $failed failed, slowest ${slowest}s"
}
hold unbudgeted
hold defaults
