#!/usr/bin/env bash
# Release binaries and Debian packages for the boards, built against glibc 2.31 so one binary
# runs on Raspberry Pi OS bookworm (2.36) and JetPack 5 / Ubuntu 20.04 (2.31).
#   bash cross/build.sh [aarch64|armv7|x86_64]...     (default: aarch64 armv7)
# Installs what it needs: Debian's cross headers (bindgen reads the target's videodev2.h), zig
# (PyPI's ziglang, in target/cross-venv) as the linker with its glibc 2.31 stubs, cargo-zigbuild
# and cargo-deb. Prints `file`, the size and the newest GLIBC symbol of each binary.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
GLIBC=2.31

declare -A TRIPLE=([aarch64]=aarch64-unknown-linux-gnu [armv7]=armv7-unknown-linux-gnueabihf [x86_64]=x86_64-unknown-linux-gnu)
declare -A GNU=([aarch64]=aarch64-linux-gnu [armv7]=arm-linux-gnueabihf [x86_64]=x86_64-linux-gnu)
declare -A LIBC=([aarch64]=libc6-dev-arm64-cross [armv7]=libc6-dev-armhf-cross [x86_64]=libc6-dev)
arches=("$@")
[ ${#arches[@]} -gt 0 ] || arches=(aarch64 armv7)

need=()
for a in "${arches[@]}"; do
    [ -n "${TRIPLE[$a]:-}" ] || { echo "unknown target $a (aarch64, armv7, x86_64)" >&2; exit 2; }
    [ "$a" = x86_64 ] || [ -d "/usr/${GNU[$a]}/include/linux" ] || need+=("${LIBC[$a]}")
done
ldconfig -p | grep -q 'libclang[-.0-9]*\.so' || need+=(libclang1-14)
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
    # bindgen (V4L2 bindings) must read the target's kernel headers, not the host's.
    if [ "$a" = x86_64 ]; then
        # Native build against this machine's glibc: under zigbuild, bindgen loses the host's
        # /usr/include (videodev2.h), so the 2.31 floor covers the ARM targets only.
        cargo build --release --locked --target "$t"
    else
        # zigbuild sets the underscore form of this variable itself; bindgen reads the
        # dash form first, so the target's headers win.
        env "BINDGEN_EXTRA_CLANG_ARGS_$t=--sysroot=/usr/${GNU[$a]} -I/usr/${GNU[$a]}/include" \
            cargo zigbuild --release --locked --target "$t.$GLIBC"
    fi
    bin=target/$t/release/veriface
    file "$bin"
    echo "size: $(stat -c %s "$bin") bytes (stripped)"
    echo "newest glibc symbol: $(readelf --dyn-syms -W "$bin" | grep -o 'GLIBC_[0-9.]*' | sort -Vu | tail -1)"
    cargo deb --target "$t" --no-build --no-strip -o target/deb/ | tail -1
done
