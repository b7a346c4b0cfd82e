#!/usr/bin/env bash
# veriface against its peer (benches/peer/peer.py: the same ONNX files under onnxruntime, one
# thread, the same numpy preprocessing, the same frames), stage by stage and end to end.
#   bash benches/peer/compare.sh [--clip FILE] [--iterations N]
# Ratio = veriface ms / peer ms (below 1: veriface is faster). Timings, so run on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
clip=samples/astronaut_zoom.mp4
iterations=20
while [ $# -gt 0 ]; do
    case $1 in
        --clip) clip=$2; shift 2 ;;
        --iterations) iterations=$2; shift 2 ;;
        *) echo "usage: compare.sh [--clip FILE] [--iterations N]" >&2; exit 2 ;;
    esac
done
venv=target/peer-venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q -r benches/peer/requirements.txt
fi
cargo build --release --locked -q
target/release/veriface bench --clip "$clip" --iterations "$iterations" --json > target/bench-veriface.json
"$venv/bin/python" benches/peer/peer.py --clip "$clip" --iterations "$iterations" --json > target/bench-peer.json
python3 - target/bench-veriface.json target/bench-peer.json <<'PY'
import json, sys
ours, peer = (json.load(open(p)) for p in sys.argv[1:3])
mine = {s["stage"]: s["mean_ms"] for s in ours["stages"]}
print(f'{"stage":36} {"veriface ms":>12} {"peer ms":>10} {"ratio":>7}')
for s in peer["stages"]:
    name, theirs = s["stage"], s["mean_ms"]
    if name in mine:
        print(f"{name:36} {mine[name]:12.2f} {theirs:10.2f} {mine[name] / theirs:7.2f}")
print(f'end to end: veriface {ours["fps"]:.1f} frames/s, peer {peer["fps"]:.1f} frames/s '
      f'({peer["runtime"]}); ratio {peer["fps"] / ours["fps"]:.2f}x the peer\'s time')
PY
