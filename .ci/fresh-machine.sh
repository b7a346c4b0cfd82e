#!/usr/bin/env bash
# README's two set-up commands on a fresh machine: a scratch Debian 12 root (debootstrap minbase)
# holding only what a Rust install itself needs (gcc as the linker driver and assembler, libc
# headers, CA certificates) and the host's Rust toolchain mounted read-only. No libclang, no
# FFmpeg, no Python: the first command must build and give its verdicts without them, the second
# may install what the tests need (.ci/test does, with apt). Fails if either command fails.
#   bash .ci/fresh-machine.sh        (as root; about 30 min on 2 cores, the build from nothing)
# Tests the committed HEAD (a clone), with an empty cargo home and target folder.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
root=$PWD/target/fresh-root
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
cargo_bin=${CARGO_HOME:-$HOME/.cargo}/bin
command -v debootstrap >/dev/null || { apt-get update -qq; apt-get install -y -qq debootstrap >/dev/null; }
# Fresh: none of what the README promises not to need. A root left by an earlier run (whose
# second command installed ffmpeg) is rebuilt.
not_fresh() {
    local tool
    for tool in ffmpeg ffprobe clang python3; do
        if chroot "$root" sh -c "command -v $tool" >/dev/null 2>&1; then echo "$tool is installed"; return; fi
    done
    if ls "$root"/usr/lib/*/libclang* >/dev/null 2>&1; then echo "libclang is installed"; fi
}
# An earlier run that was killed may have left its mounts (/dev among them): unmount them before
# anything is removed, and never let rm cross into another file system.
unmount_all() {
    local m
    for m in $(awk -v r="$root" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r); do
        umount -l "$m"
    done
}
unmount_all
if [ ! -x "$root/usr/bin/gcc" ] || [ -n "$(not_fresh)" ]; then
    rm -rf --one-file-system "$root"
    # The same Debian mirror the host's apt uses.
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null \
        || awk '/^deb / {print $2; exit}' /etc/apt/sources.list)
    debootstrap --variant=minbase --include=gcc,libc6-dev,ca-certificates bookworm "$root" "$mirror" >/dev/null
fi
reason=$(not_fresh)
if [ -n "$reason" ]; then echo "fresh root is not fresh: $reason" >&2; exit 1; fi

mounts=()
cleanup() { for ((i=${#mounts[@]}-1; i>=0; i--)); do umount -l "${mounts[$i]}" 2>/dev/null || true; done; }
trap cleanup EXIT
bind() { mkdir -p "$2"; mount --bind "$1" "$2"; mounts+=("$2"); [ "${3:-}" = ro ] && mount -o remount,bind,ro "$2"; true; }
bind /dev "$root/dev"
bind /dev/pts "$root/dev/pts"
mount -t proc proc "$root/proc"; mounts+=("$root/proc")
bind "$rustup_home" "$root/opt/rustup" ro
bind "$cargo_bin" "$root/opt/cargo-bin" ro
cp /etc/resolv.conf "$root/etc/resolv.conf"
# The machine's trust store, not a build tool: where the network inspects TLS, its CA is there.
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"

rm -rf --one-file-system "$root/work" "$root/root/.cargo"
mkdir -p "$root/work"
git clone -q "$PWD" "$root/work/veriface"
toolchain=$(rustup show active-toolchain | cut -d' ' -f1)
in_root() {
    chroot "$root" env -i HOME=/root PATH=/opt/cargo-bin:/usr/sbin:/usr/bin:/sbin:/bin \
        RUSTUP_HOME=/opt/rustup RUSTUP_TOOLCHAIN="$toolchain" CARGO_HOME=/root/.cargo \
        TERM=dumb bash -o pipefail -c "cd /work/veriface && $1"
}
step() {
    local start=$SECONDS
    echo "== $1"
    if in_root "$1"; then
        echo "== ok in $((SECONDS - start)) s: $1"
    else
        echo "== FAILED after $((SECONDS - start)) s: $1" >&2
        exit 1
    fi
}
# README's commands, word for word (taken from README so the two cannot drift apart).
first=$(grep -m1 '^cargo run --release -- analyze samples/' "$root/work/veriface/README.md" | sed 's/ *#.*//')
second=$(grep -m1 '^bash .ci/test' "$root/work/veriface/README.md" | sed 's/ *#.*//')
[ -n "$first" ] && [ -n "$second" ] || { echo "README's set-up commands not found" >&2; exit 1; }
step "$first | tee /tmp/analyze.txt"
in_root "grep -q '^== samples/astronaut_zoom.avi' /tmp/analyze.txt" \
    || { echo "no verdict block for the bundled clip from: $first" >&2; exit 1; }
step "$second"
echo "fresh machine: both README commands passed"
