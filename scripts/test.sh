#!/usr/bin/env bash
# The project's test command (README "Testing"; .ci/run calls exactly this).
# Installs what the tests need, then: rustfmt check, clippy and rustdoc with warnings
# denied (builds from the committed Cargo.lock), the whole test suite, the kernel SCTP / rsplib tests in a VM (scripts/sctp-tests.sh),
# and a short run of the fuzz target.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages: tshark (the independent Wireshark check of our bytes), curl (an
# HTTP/2-over-TLS client for the HTTP gateway's TLS test), dig (dnsutils, the DNS
# gateway's client), chromium (renders the status page in tests/status_page.rs),
# rsplib-tools (cspmonitor, which must show our CSP reports in tests/csp.rs).
missing=()
command -v cspmonitor >/dev/null || missing+=(rsplib-tools)
command -v chromium >/dev/null || missing+=(chromium)
command -v tshark >/dev/null || missing+=(tshark)
command -v curl >/dev/null || missing+=(curl)
command -v dig >/dev/null || missing+=(dnsutils)
if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]}"
    echo "wireshark-common wireshark-common/install-setuid boolean false" | as_root debconf-set-selections
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Cargo tools.
command -v cargo-fuzz >/dev/null || { echo "== installing cargo-fuzz"; cargo install cargo-fuzz --locked --quiet; }

echo "== cargo fmt --check"
cargo fmt --all -- --check
(cd fuzz && cargo fmt -- --check)

echo "== cargo clippy -D warnings (with the lock file as committed)"
cargo clippy --locked --workspace --all-targets --all-features -- -D warnings

echo "== cargo doc -D warnings"
RUSTDOCFLAGS="-D warnings" cargo doc --locked --workspace --no-deps --all-features --quiet

echo "== cargo test"
# Tests that need an external tool fail instead of skipping when this is set.
export RSERPOOL_REQUIRE_TSHARK=1 RSERPOOL_REQUIRE_CHROMIUM=1 RSERPOOL_REQUIRE_TOOLS=1
cargo test --locked --workspace --all-features

echo "== kernel SCTP and rsplib interoperability (in the SCTP VM)"
scripts/sctp-tests.sh

echo "== fuzz target: build and a short run from the spec vectors"
corpus=$(mktemp -d)
trap 'rm -rf "$corpus"' EXIT
(cd fuzz && cargo fuzz run --sanitizer none decode "$corpus" seeds/decode -- -max_total_time="${FUZZ_SECONDS:-20}" -print_final_stats=1 2>&1 | tail -n 3)

echo "== all checks passed"
