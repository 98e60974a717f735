#!/usr/bin/env bash
# Kernel SCTP and rsplib interoperability tests (tests/sctp.rs), run inside the SCTP VM
# of ../shared/tools/sctpvm: this machine's kernel has no SCTP. Called by
# scripts/test.sh; runnable alone.
#
# Installs rsplib 3.4.4 (the reference peer: rspregistrar, rspserver, rspterminal,
# pingpongclient, hsdump) and builds the VM cache (about 30 s the first time). A VM
# that is missing, cannot be built or does not start is a failure (exit 1), as a
# failing test is: the SCTP checks are part of the suite, not optional.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
loud() { printf '\n*** %s ***\n\n' "$*" >&2; }

vm=../shared/tools/sctpvm
if [ ! -x "$vm/run" ]; then
    loud "SCTP TESTS DID NOT RUN: $vm is missing (the kernel SCTP and rsplib checks need it)"
    exit 1
fi

missing=()
for tool in rspregistrar:rsplib-registrar rspserver:rsplib-tools pingpongclient:rsplib-services hsdump:rsplib-tools dumpcap:wireshark-common; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "== SCTP VM: building its cache (kernel, QEMU)"
if ! "$vm/build" >/tmp/sctpvm-build.log 2>&1; then
    tail -n 20 /tmp/sctpvm-build.log >&2
    loud "SCTP TESTS DID NOT RUN: the SCTP VM could not be built (log above)"
    exit 1
fi
if ! "$vm/run" --timeout 120 -- true; then
    loud "SCTP TESTS DID NOT RUN: the SCTP VM does not start on this machine"
    exit 1
fi

echo "== building the SCTP tests"
binary=$(cargo test --all-features --test sctp --no-run 2>&1 | sed -n 's/.*Executable tests\/sctp.rs (\(.*\))/\1/p' | tail -n 1)
if [ -z "$binary" ]; then
    echo "cannot find the tests/sctp.rs test binary" >&2
    exit 1
fi

echo "== SCTP tests in the VM (addresses 192.0.2.1 and 198.51.100.1 on dummy0)"
set +e
# The tests start rserpool from a copy in the guest's RAM (about 2 s to copy): the
# guest sees target/ through 9p with cache=mmap, which drops a file's pages as soon as
# no process maps it, so each start re-read the debug binary through the emulator and
# took from 0.3 s to over 30 s (a registrar missed its 20 s ready deadline in CI).
"$vm/run" --timeout 900 --mem 2048 --addr 192.0.2.1/24 --addr 198.51.100.1/24 \
    --share "$PWD/target" -- bash -c \
    'cp target/debug/rserpool /tmp/rserpool && RSERPOOL_TEST_BINARY=/tmp/rserpool exec "$0" --ignored --test-threads=1' \
    "$binary"
status=$?
set -e
case $status in
    0) echo "== SCTP tests passed" ;;
    124 | 125)
        loud "SCTP TESTS DID NOT FINISH: the VM failed or timed out (status $status)"
        exit 1
        ;;
    *)
        echo "SCTP tests failed (status $status)" >&2
        exit 1
        ;;
esac
