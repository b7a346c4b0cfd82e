#!/usr/bin/env bash
# Guest instructions per inference for each frame-model form on emulated ARM cores, counted by a
# qemu TCG plugin (insn_count.c): (count over 2 runs - count over 1 run), so load and
# planning cancel out. tract picks kernels from the CPU features qemu reports for -cpu, so
# cortex-a72 (Pi 4: no dotprod, no fp16 arithmetic) and cortex-a76 (Pi 5; like Orin's A78AE and
# Xavier's Carmel: dotprod, fp16) take different code paths.
#   bash benches/arm/count.sh [aarch64 binary]    (default: the cross/build.sh one)
#   MODELS="deepfake backbone" BENCH_ARGS="--tract-layout nchw" bash benches/arm/count.sh ...
# Prints a table and writes target/arm-insns.json. Instructions are not time: see README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-target/aarch64-unknown-linux-gnu/release/veriface}
[ -x "$bin" ] || { echo "$bin: missing (bash cross/build.sh aarch64)" >&2; exit 2; }
plugin=target/insn_count.so
gcc -O2 -shared -fPIC -Wall -o "$plugin" benches/arm/insn_count.c
cpus=(${CPUS:-cortex-a72 cortex-a76})
models=(${MODELS:-deepfake deepfake_int8 backbone backbone_int8_qdq backbone_int8_qop})

count() { # cpu model iterations -> instructions
    qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu "$1" -plugin "$plugin" -d plugin \
        "$bin" bench --model "$2" --iterations "$3" ${BENCH_ARGS:-} 2>&1 >/dev/null | awk '/^insns /{print $2}'
}
printf '%-20s' model; printf '%16s' "${cpus[@]}"; echo
json="{"
for m in "${models[@]}"; do
    printf '%-20s' "$m"
    json+="\"$m\":{"
    for c in "${cpus[@]}"; do
        one=$(count "$c" "$m" 1)
        two=$(count "$c" "$m" 2)
        per=$(( two - one ))
        printf '%16s' "$(awk -v n="$per" 'BEGIN{printf "%.3f G", n/1e9}')"
        json+="\"$c\":$per,"
    done
    json="${json%,}},"
    echo
done
echo "${json%,}}" > target/arm-insns.json
echo "instructions per inference (guest, single thread); JSON: target/arm-insns.json"
