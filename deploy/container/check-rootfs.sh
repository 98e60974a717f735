#!/usr/bin/env bash
# No container registry is reachable here, so this checks what the image needs: a root
# file system with only the release binary and the shared libraries it links (what
# bookworm-slim provides) runs `rserpool --version` and `rserpool decode` (chroot; as
# root, or in a user namespace with `unshare -r`).
set -euo pipefail
cd "$(dirname "$0")/../.."
binary=${1:-target/release/rserpool}
[ -x "$binary" ] || cargo build --release --quiet -p rserpool
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/bin"
cp "$binary" "$root/usr/bin/rserpool"
for library in $(ldd "$binary" | grep -o '/[^ ]*'); do
    mkdir -p "$root$(dirname "$library")"
    cp "$library" "$root$library"
done
run() { if [ "$(id -u)" = 0 ]; then chroot "$root" "$@"; else unshare -r chroot "$root" "$@"; fi; }
run /usr/bin/rserpool --version
run /usr/bin/rserpool decode --protocol asap 050000100009000c4563686f506f6f6c >/dev/null
echo "rootfs check: the binary runs with only its linked libraries ($(du -sh "$root" | cut -f1))"
