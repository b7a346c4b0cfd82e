#!/usr/bin/env bash
# Runs `veriface analyze` with an ARM release binary under qemu-user and with the host build, and
# compares them: same files, same faces per frame, every probability within 1e-3 (NEON and AVX2
# kernels round differently), the same verdict per file.
#   bash cross/check-verdicts.sh aarch64|armv7 [analyze arguments...]   (default: samples/)
# Needs the ARM binary from cross/build.sh and qemu-user.
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A TRIPLE=([aarch64]=aarch64-unknown-linux-gnu [armv7]=armv7-unknown-linux-gnueabihf)
declare -A QEMU=([aarch64]="qemu-aarch64 -L /usr/aarch64-linux-gnu" [armv7]="qemu-arm -L /usr/arm-linux-gnueabihf")
arch=${1:?usage: check-verdicts.sh aarch64|armv7 [analyze args...]}
shift
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(samples/)
arm_bin=target/${TRIPLE[$arch]}/release/veriface
[ -x "$arm_bin" ] || { echo "$arm_bin: missing (run bash cross/build.sh $arch)" >&2; exit 2; }
out=target/check-verdicts
mkdir -p "$out"
cargo build --release --locked -q
target/release/veriface analyze "${args[@]}" --quiet --json "$out/host.json" >/dev/null
start=$(date +%s)
${QEMU[$arch]} "$arm_bin" analyze "${args[@]}" --quiet --json "$out/$arch.json" >/dev/null
echo "$arch under qemu: $(( $(date +%s) - start )) s"
python3 - "$out/host.json" "$out/$arch.json" <<'PY'
import json, sys
host, arm = (json.load(open(p)) for p in sys.argv[1:3])
assert [f["file"] for f in host["files"]] == [f["file"] for f in arm["files"]], "file lists differ"
worst, compared = 0.0, 0
for h, a in zip(host["files"], arm["files"]):
    assert len(h["frames"]) == len(a["frames"]), f'{h["file"]}: frame counts differ'
    for fh, fa in zip(h["frames"], a["frames"]):
        assert len(fh["faces"]) == len(fa["faces"]), f'{h["file"]}: face counts differ'
        for xh, xa in zip(fh["faces"], fa["faces"]):
            for key in ("deepfake", "temporal", "score"):
                if xh.get(key) is not None:
                    worst = max(worst, abs(xh[key] - xa[key]))
                    compared += 1
            assert xh["emotion"]["label"] == xa["emotion"]["label"], f'{h["file"]}: emotion differs'
    sh, sa = h["summary"], a["summary"]
    assert sh["label"] == sa["label"], f'{h["file"]}: verdict {sh["label"]} vs {sa["label"]}'
    print(f'{h["file"]}: {sh["label"]} on both')
assert worst <= 1e-3, f"largest probability difference {worst}"
print(f"{compared} probabilities compared, largest difference {worst:.2e}: same verdicts")
PY
