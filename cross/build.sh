#!/usr/bin/env bash
# Release binaries for the boards: installs the cross toolchain pieces, builds each target,
# and prints what the binary is, its size and the newest glibc symbol it needs.
#   bash cross/build.sh [aarch64|armv7]...     (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

declare -A TRIPLE=([aarch64]=aarch64-unknown-linux-gnu [armv7]=armv7-unknown-linux-gnueabihf)
declare -A GCC=([aarch64]=gcc-aarch64-linux-gnu [armv7]=gcc-arm-linux-gnueabihf)
declare -A LIBC=([aarch64]=libc6-dev-arm64-cross [armv7]=libc6-dev-armhf-cross)
declare -A OBJDUMP=([aarch64]=aarch64-linux-gnu-objdump [armv7]=arm-linux-gnueabihf-objdump)
arches=("$@")
[ ${#arches[@]} -gt 0 ] || arches=(aarch64 armv7)

need=()
for a in "${arches[@]}"; do
    [ -n "${TRIPLE[$a]:-}" ] || { echo "unknown target $a (aarch64, armv7)" >&2; exit 2; }
    command -v "${OBJDUMP[$a]}" >/dev/null || need+=("${GCC[$a]}" "${LIBC[$a]}")
done
ldconfig -p | grep -q 'libclang[-.0-9]*\.so' || need+=(libclang1-14)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    apt-get install -y --no-install-recommends "${need[@]}" >/dev/null
fi
for a in "${arches[@]}"; do
    t=${TRIPLE[$a]}
    rustup target add "$t" >/dev/null
    cargo --config cross/config.toml build --release --locked --target "$t"
    bin=target/$t/release/veriface
    file "$bin"
    echo "size: $(stat -c %s "$bin") bytes"
    echo "newest glibc symbol: $("${OBJDUMP[$a]}" -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sort -Vu | tail -1)"
done
