#!/usr/bin/env bash
# Release binaries and Debian packages for the boards, built against glibc 2.31 so one binary
# runs on Raspberry Pi OS bookworm (2.36) and JetPack 5 / Ubuntu 20.04 (2.31).
#   bash cross/build.sh [aarch64|armv7|x86_64]...     (default: aarch64 armv7)
# Installs what it needs: zig (PyPI's ziglang, in target/cross-venv) as the linker with its glibc
# 2.31 stubs, cargo-zigbuild and cargo-deb. The V4L2 bindings are committed per target
# (v4l2-sys/), so no libclang or cross headers are needed.
# Prints `file`, the size and the newest GLIBC symbol of each binary.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
GLIBC=2.31

declare -A TRIPLE=([aarch64]=aarch64-unknown-linux-gnu [armv7]=armv7-unknown-linux-gnueabihf [x86_64]=x86_64-unknown-linux-gnu)
arches=("$@")
[ ${#arches[@]} -gt 0 ] || arches=(aarch64 armv7)

need=()
for a in "${arches[@]}"; do
    [ -n "${TRIPLE[$a]:-}" ] || { echo "unknown target $a (aarch64, armv7, x86_64)" >&2; exit 2; }
done
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
command -v readelf >/dev/null || need+=(binutils)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    apt-get install -y --no-install-recommends "${need[@]}" >/dev/null
fi
venv=target/cross-venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m ziglang version >/dev/null 2>&1 || "$venv/bin/pip" install -q ziglang==0.17.0
export PATH="$PWD/$venv/bin:$PATH"
command -v cargo-zigbuild >/dev/null || cargo install -q --locked cargo-zigbuild --version 0.24.1
command -v cargo-deb >/dev/null || cargo install -q --locked cargo-deb --version 3.8.0

mkdir -p target/deb
for a in "${arches[@]}"; do
    t=${TRIPLE[$a]}
    rustup target add "$t" >/dev/null
    if [ "$a" = x86_64 ]; then
        # Native build against this machine's glibc (PCs run current distributions).
        cargo build --release --locked --target "$t"
    else
        cargo zigbuild --release --locked --target "$t.$GLIBC"
    fi
    bin=target/$t/release/veriface
    file "$bin"
    echo "size: $(stat -c %s "$bin") bytes (stripped)"
    echo "newest glibc symbol: $(readelf --dyn-syms -W "$bin" | grep -o 'GLIBC_[0-9.]*' | sort -Vu | tail -1)"
    cargo deb --target "$t" --no-build --no-strip -o target/deb/ | tail -1
done
