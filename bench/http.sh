#!/usr/bin/env bash
# HTTP gateway benchmark: wrk (Debian) at 64 connections against the gateway, HAProxy 2.6
# (`mode http`, one thread) and nginx 1.22 (one worker), all in front of the same two
# nginx backends (../shared/baselines), on the same machine; then the same over TLS
# (a self-signed ECDSA certificate; HTTP/1.1, keep-alive). Each figure is the median of
# ROUNDS alternating runs; prints requests/s, p50 and p99 and the ratios to HAProxy.
#   bench/http.sh [SECONDS]        (ROUNDS=5; ONLY=plain|tls|h2|pe-tls: one part; THREADS=2: plain
#                                   HTTP again on two threads, and the ratios to one)
# The h2 part: clients speak HTTP/1.1 to the gateway (`pe_protocol: http2`) and to
# HAProxy (`proto h2` servers), both speaking h2c to two nginx backends listening with
# `http2` (nginx 1.22's h2c with prior knowledge), forwarding headers on both.
# The pe-tls part: plain HTTP/1.1 clients; the gateway (`pe_tls`, the backends'
# certificate checked against a deployment CA from `rserpool cert` and their IP
# address) and HAProxy (`ssl verify required ca-file`, the chain checked) speak
# HTTP/1.1 over TLS to two nginx backends; connections kept alive on both sides.
# The gateway runs with one thread (TOKIO_WORKER_THREADS=1) like HAProxy's nbthread 1.
# The gateway adds X-Forwarded-For, X-Forwarded-Proto, Forwarded and Via (requests; Via
# on responses too); ../shared/baselines/haproxy.cfg adds none. The ratios are taken to
# HAProxy configured to add the same headers (`option forwardfor` and three header
# rules), as a user replacing one with the other would compare them; the baseline file
# as it is ("haproxy_bare") and nginx (no such headers either) are measured beside.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_=${1:-5}; ROUNDS=${ROUNDS:-5}; THREADS=${THREADS:-1}
baselines=$(cd ../shared/baselines && pwd)
# shellcheck source=bench/common.sh
. bench/common.sh
need "haproxy nginx-light wrk openssl" haproxy nginx wrk openssl
cargo build --release --quiet -p rserpool
mkdir -p /tmp/baselines
pid_files+=(/tmp/baselines/nginx.pid /tmp/baselines/nginx-proxy.pid "$work/nginx-tls.pid")

# Backends and the baselines, as ../shared/baselines/README.md starts them.
nginx -c "$baselines/nginx-backend.conf"
nginx -c "$baselines/nginx-proxy.conf"
haproxy -f "$baselines/haproxy.cfg" -D -p "$work/haproxy.pid"; pids+=("$(cat "$work/haproxy.pid")")

# The global and defaults sections of the HAProxy configurations written here.
haproxy_head() {
    cat <<CFG
global
  nbthread 1
  maxconn 5000
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
CFG
}

# HAProxy passing on the same forwarding headers as the gateway (PROTO: http or https).
haproxy_forwarding() {
    cat <<CFG
  option forwardfor
  http-request set-header X-Forwarded-Proto $1
  http-request add-header Forwarded "for=%ci;proto=$1"
  http-request add-header Via "1.1 haproxy"
  http-response add-header Via "1.1 haproxy"
CFG
}
awk -v rules="$(haproxy_forwarding http)" '{ print } /^frontend fe$/ { print rules }' \
    "$baselines/haproxy.cfg" | sed 's/127.0.0.1:18091/127.0.0.1:18095/; s/127.0.0.1:18092/127.0.0.1:18096/' \
    > "$work/haproxy-fwd.cfg"
haproxy -f "$work/haproxy-fwd.cfg" -D -p "$work/haproxy-fwd.pid"; pids+=("$(cat "$work/haproxy-fwd.pid")")

# TLS material and TLS variants of the baselines.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench.example \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cat "$work/cert.pem" "$work/key.pem" > "$work/combined.pem"
cat > "$work/haproxy-tls.cfg" <<CFG
$(haproxy_head)
frontend fe
  bind 127.0.0.1:18491 ssl crt $work/combined.pem alpn http/1.1
$(haproxy_forwarding https)
  default_backend be
backend be
  balance roundrobin
  http-reuse always
  server s1 127.0.0.1:18081
  server s2 127.0.0.1:18082
CFG
haproxy -f "$work/haproxy-tls.cfg" -D -p "$work/haproxy-tls.pid"; pids+=("$(cat "$work/haproxy-tls.pid")")
cat > "$work/nginx-tls.conf" <<CFG
worker_processes 1;
pid $work/nginx-tls.pid;
error_log $work/nginx-tls-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  upstream be { server 127.0.0.1:18081; server 127.0.0.1:18082; keepalive 64; }
  server { listen 127.0.0.1:18490 ssl; ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem;
           location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
CFG
nginx -c "$work/nginx-tls.conf"

# backends NAME PORT1 PORT2 LISTEN [DIRECTIVE...]: two nginx backends giving the
# baselines' answer, listening with LISTEN's options, and a connection is never
# recycled (nginx closes one after `keepalive_requests`, 1 000 by default, requests or
# HTTP/2 streams).
backends() {
    local name=$1 first=$2 second=$3 listen=$4; shift 4
    cat > "$work/nginx-$name.conf" <<CFG
worker_processes 1;
pid $work/nginx-$name.pid;
error_log $work/nginx-$name-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
$(printf '  %s\n' "$@")
  server { listen 127.0.0.1:$first $listen; location / { return 200 "hello from backend\n"; } }
  server { listen 127.0.0.1:$second $listen; location / { return 200 "hello from backend\n"; } }
}
CFG
    nginx -c "$work/nginx-$name.conf"; pid_files+=("$work/nginx-$name.pid")
}

# haproxy_to NAME LISTEN SERVER1 SERVER2 OPTIONS: HAProxy on LISTEN with the forwarding
# headers, round robin over the two servers with OPTIONS.
haproxy_to() {
    cat > "$work/haproxy-$1.cfg" <<CFG
$(haproxy_head)
frontend fe
  bind $2
$(haproxy_forwarding http)
  default_backend be
backend be
  balance roundrobin
  http-reuse always
  server s1 $3 $5
  server s2 $4 $5
CFG
    haproxy -f "$work/haproxy-$1.cfg" -D -p "$work/haproxy-$1.pid"; pids+=("$(cat "$work/haproxy-$1.pid")")
}

# h2c backends and HAProxy speaking h2 to them.
backends h2-backend 18083 18084 http2
haproxy_to h2 127.0.0.1:18097 127.0.0.1:18083 127.0.0.1:18084 "proto h2"

# TLS backends (a certificate for 127.0.0.1 from a deployment CA) and HAProxy speaking
# TLS to them.
"$bin/rserpool" cert ca --dir "$work/pki" >/dev/null
"$bin/rserpool" cert issue --dir "$work/pki" --name backend --ip 127.0.0.1 >/dev/null
backends tls-backend 18085 18086 ssl "ssl_certificate $work/pki/backend.pem;" \
    "ssl_certificate_key $work/pki/backend-key.pem;"
haproxy_to pe-tls 127.0.0.1:18098 127.0.0.1:18085 127.0.0.1:18086 "ssl verify required ca-file $work/pki/ca.pem"

# The gateway: a registrar, one `pe` agent per backend, plain and TLS listeners, one
# speaking h2c to the h2 backends and one speaking TLS to the TLS backends.
start_pool WebPool 18081 18082
for port in 18083 18084; do
    setsid "$bin/rserpool" pe --pool H2Pool --backend 127.0.0.1:"$port" --registrar "$asap" --health tcp \
        2>"$work/pe-$port.log" & pids+=($!)
done
for port in 18085 18086; do
    setsid "$bin/rserpool" pe --pool TlsPool --backend 127.0.0.1:"$port" --registrar "$asap" --health tcp \
        2>"$work/pe-$port.log" & pids+=($!)
done
web_gateway_config "    - listen: 127.0.0.1:18489
      tls:
        certificates: [{cert: $work/cert.pem, key: $work/key.pem}]
      routes: [{pool: WebPool}]" "    - listen: 127.0.0.1:18093
      routes: [{pool: H2Pool, pe_protocol: http2}]" "    - listen: 127.0.0.1:18094
      routes: [{pool: TlsPool, pe_tls: {ca: $work/pki/ca.pem}}]"
TOKIO_WORKER_THREADS=1 setsid "$bin/rserpool" gateway --config "$work/gateway.yaml" 2>"$work/gateway.log" & gateway=$!; pids+=($gateway)
ready "$work/gateway.log" ready
for pool in WebPool H2Pool TlsPool; do
    until "$bin/rserpool" resolve "$pool" --registrar "$asap" --count 10 | grep -q "2 pool element"; do sleep 0.2; done
done

# wrk's figures: requests/s and the p50/p99 latency in ms.
measure() {
    wrk -t1 -c64 -d"${SECONDS_}s" --latency "$1" | awk '
        function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
        /Requests\/sec/ { rps = $2 } / 50%/ { p50 = ms($2) } / 99%/ { p99 = ms($2) }
        END { printf "%.0f %.3f %.3f\n", rps, p50, p99 }'
}
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
# Arguments: the part's name, then name=PID=URL for each target (the gateway first, then
# HAProxy); with a PID, the process's CPU time per request is reported too.
compare() {
    local part=$1; shift
    declare -A rps p50 p99 cpu served
    local target name url out pid t0
    # wrk counts error answers as requests too: each target must answer as the backends do.
    for target in "$@"; do
        name=${target%%=*}; url=${target##*=}
        curl -fsk --max-time 5 "$url" | grep -q "hello from backend" \
            || { echo "$name ($url) does not answer with the backends' 200" >&2; exit 1; }
    done
    for _ in $(seq "$ROUNDS"); do
        for target in "$@"; do
            name=${target%%=*}; pid=${target#*=}; url=${pid#*=}; pid=${pid%%=*}
            [ -n "$pid" ] && t0=$(cpu_ticks "$pid")
            out=$(measure "$url"); echo "  $name: $out (requests/s p50_ms p99_ms)"
            if [ -n "$pid" ]; then
                cpu[$name]=$(( ${cpu[$name]:-0} + $(cpu_ticks "$pid") - t0 ))
                served[$name]=$(awk -v a="${served[$name]:-0}" -v r="${out%% *}" -v s="$SECONDS_" 'BEGIN { print a + r * s }')
            fi
            rps[$name]+="$(echo "$out" | cut -d' ' -f1) "; p50[$name]+="$(echo "$out" | cut -d' ' -f2) "; p99[$name]+="$(echo "$out" | cut -d' ' -f3) "
        done
    done
    echo "=> $part (medians of $ROUNDS x ${SECONDS_} s, wrk -t1 -c64)"
    local g=${1%%=*} h=${2%%=*} m gr gp hr hp
    for target in "$@"; do
        name=${target%%=*}
        m="$(printf '%s\n' ${rps[$name]} | median) $(printf '%s\n' ${p50[$name]} | median) $(printf '%s\n' ${p99[$name]} | median)"
        printf '   %-8s %s requests/s, p50 %s ms, p99 %s ms\n' "$name" ${m}
        eval "med_$name=\"$m\""
    done
    gr=$(eval echo "\$med_$g" | cut -d' ' -f1); gp=$(eval echo "\$med_$g" | cut -d' ' -f3)
    hr=$(eval echo "\$med_$h" | cut -d' ' -f1); hp=$(eval echo "\$med_$h" | cut -d' ' -f3)
    # Rounds alternate, so each round's pair ran under about the same machine load.
    # shellcheck disable=SC2206 # lists of numbers
    local gl=(${rps[$g]}) hl=(${rps[$h]}) ahead=0 i
    local paired
    for i in "${!gl[@]}"; do [ "${gl[$i]}" -ge "${hl[$i]}" ] && ahead=$((ahead + 1)); done
    paired=$(for i in "${!gl[@]}"; do awk -v a="${gl[$i]}" -v b="${hl[$i]}" 'BEGIN { printf "%.4f\n", a / b }'; done | median)
    awk -v gr="$gr" -v hr="$hr" -v gp="$gp" -v hp="$hp" -v ahead="$ahead" -v rounds="${#gl[@]}" -v paired="$paired" \
        'BEGIN { printf "   gateway/HAProxy: requests/s %.2f (median of the rounds\047 ratios %.2f; gateway ahead in %d of %d rounds), p99 %.2f\n", gr / hr, paired, ahead, rounds, gp / hp }'
    local hz; hz=$(getconf CLK_TCK)
    awk -v gc="${cpu[$g]:-0}" -v gs="${served[$g]:-1}" -v hc="${cpu[$h]:-0}" -v hs="${served[$h]:-1}" -v hz="$hz" \
        'BEGIN { printf "   CPU us per request: gateway %.1f, HAProxy %.1f: HAProxy/gateway = %.2f\n", gc / hz * 1e6 / gs, hc / hz * 1e6 / hs, (hc / hs) / ((gc / gs) + 1e-12) }'
    local other n nr
    for other in "${@:3}"; do
        n=${other%%=*}
        nr=$(eval echo "\$med_$n" | cut -d' ' -f1)
        awk -v gr="$gr" -v nr="$nr" -v n="$n" 'BEGIN { printf "   gateway/%s: requests/s %.2f\n", n, gr / nr }'
    done
}
if [ -z "${ONLY:-}" ] || [ "$ONLY" = plain ]; then
    compare "plain HTTP/1.1" "gateway=$gateway=http://127.0.0.1:18089/" "haproxy=$(cat "$work/haproxy-fwd.pid")=http://127.0.0.1:18095/" \
        "haproxy_bare=$(cat "$work/haproxy.pid")=http://127.0.0.1:18091/" nginx==http://127.0.0.1:18090/
fi
if [ -z "${ONLY:-}" ] || [ "$ONLY" = tls ]; then
    compare "TLS (HTTP/1.1)" "gateway=$gateway=https://127.0.0.1:18489/" "haproxy=$(cat "$work/haproxy-tls.pid")=https://127.0.0.1:18491/" \
        nginx==https://127.0.0.1:18490/
fi
if [ -z "${ONLY:-}" ] || [ "$ONLY" = h2 ]; then
    compare "HTTP/1.1 clients, h2c to the backends" "gateway=$gateway=http://127.0.0.1:18093/" \
        "haproxy=$(cat "$work/haproxy-h2.pid")=http://127.0.0.1:18097/"
fi
if [ -z "${ONLY:-}" ] || [ "$ONLY" = pe-tls ]; then
    compare "HTTP/1.1 clients, TLS to the backends" "gateway=$gateway=http://127.0.0.1:18094/" \
        "haproxy=$(cat "$work/haproxy-pe-tls.pid")=http://127.0.0.1:18098/"
fi
echo "gateway RSS: $(awk '/VmRSS/ {print $2, $3}' /proc/$gateway/status)"

# THREADS=2: plain HTTP/1.1 again with the gateway on two worker threads, HAProxy (with
# the forwarding headers) on nbthread 2 and nginx on 2 workers; the backends stay as
# they are. Each side's median at two threads over its median at one is printed.
if [ "$THREADS" -ge 2 ] && [ -z "${ONLY:-}" -o "${ONLY:-}" = plain ]; then
    read -r one_gateway _ <<<"$med_gateway"; read -r one_haproxy _ <<<"$med_haproxy"; read -r one_nginx _ <<<"$med_nginx"
    gone() { for _ in $(seq 200); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.05; done; }
    kill "$gateway"; gone "$gateway"
    TOKIO_WORKER_THREADS=$THREADS setsid "$bin/rserpool" gateway --config "$work/gateway.yaml" 2>"$work/gateway-$THREADS.log" & gateway=$!; pids+=($gateway)
    ready "$work/gateway-$THREADS.log" ready
    old=$(cat "$work/haproxy-fwd.pid"); kill "$old"; gone "$old"
    sed "s/nbthread 1/nbthread $THREADS/" "$work/haproxy-fwd.cfg" > "$work/haproxy-fwd-$THREADS.cfg"
    haproxy -f "$work/haproxy-fwd-$THREADS.cfg" -D -p "$work/haproxy-fwd-$THREADS.pid"; pids+=("$(cat "$work/haproxy-fwd-$THREADS.pid")")
    old=$(cat /tmp/baselines/nginx-proxy.pid); kill -QUIT "$old"; gone "$old"
    sed -e "s/worker_processes 1/worker_processes $THREADS/" -e "s#/tmp/baselines/nginx-proxy#$work/nginx-proxy-$THREADS#g" \
        "$baselines/nginx-proxy.conf" > "$work/nginx-proxy-$THREADS.conf"
    nginx -c "$work/nginx-proxy-$THREADS.conf"; pid_files+=("$work/nginx-proxy-$THREADS.pid")
    until curl -fs -o /dev/null http://127.0.0.1:18089/ && curl -fs -o /dev/null http://127.0.0.1:18095/ \
        && curl -fs -o /dev/null http://127.0.0.1:18090/; do sleep 0.2; done
    compare "plain HTTP/1.1, $THREADS threads (nginx: $THREADS workers)" "gateway=$gateway=http://127.0.0.1:18089/" \
        "haproxy=$(cat "$work/haproxy-fwd-$THREADS.pid")=http://127.0.0.1:18095/" nginx==http://127.0.0.1:18090/
    read -r two_gateway _ <<<"$med_gateway"; read -r two_haproxy _ <<<"$med_haproxy"; read -r two_nginx _ <<<"$med_nginx"
    awk -v g1="$one_gateway" -v g2="$two_gateway" -v h1="$one_haproxy" -v h2="$two_haproxy" -v n1="$one_nginx" -v n2="$two_nginx" -v n="$THREADS" \
        'BEGIN { printf "=> %d threads against one (same run): gateway %.2fx, HAProxy %.2fx, nginx %.2fx\n", n, g2 / g1, h2 / h1, n2 / n1 }'
fi
