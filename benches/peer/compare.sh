#!/usr/bin/env bash
# veriface against its peer (benches/peer/peer.py: the same ONNX files under onnxruntime, one
# thread, the same numpy preprocessing, the same frames), stage by stage and end to end.
#   bash benches/peer/compare.sh [--clip FILE] [--iterations N] [--passes N] [--threads N] [--memory-seconds S]
# Ratio = veriface ms / peer ms (below 1: veriface is faster). Then the daemon's cold start and
# peak RSS (benches/run_memory.py; --memory-seconds 0 skips it). Timings: run on an idle machine.
# VERIFACE_BIN=PATH times that binary instead of building target/release/veriface (e.g. the
# release-nolto profile's, which times the same: README, Performance). Per kind of work inside
# one model: benches/peer/node_compare.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
clip=samples/astronaut_zoom.avi
iterations=20
passes=3
threads=1
memory_seconds=60
while [ $# -gt 0 ]; do
    case $1 in
        --clip) clip=$2; shift 2 ;;
        --iterations) iterations=$2; shift 2 ;;
        --passes) passes=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --memory-seconds) memory_seconds=$2; shift 2 ;;
        *) echo "usage: compare.sh [--clip FILE] [--iterations N] [--passes N] [--threads N] [--memory-seconds S]" >&2; exit 2 ;;
    esac
done
venv=target/peer-venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q -r benches/peer/requirements.txt
fi
bin=${VERIFACE_BIN:-target/release/veriface}
[ -n "${VERIFACE_BIN:-}" ] || cargo build --release --locked -q
"$bin" bench --clip "$clip" --iterations "$iterations" --passes "$passes" \
    --threads "$threads" --json > target/bench-veriface.json
"$venv/bin/python" benches/peer/peer.py --clip "$clip" --iterations "$iterations" \
    --passes "$passes" --json > target/bench-peer.json
python3 - target/bench-veriface.json target/bench-peer.json <<'PY'
import json, sys
ours, peer = (json.load(open(p)) for p in sys.argv[1:3])
mine = {s["stage"]: s["mean_ms"] for s in ours["stages"]}
print(f'{"stage":36} {"veriface ms":>12} {"peer ms":>10} {"ratio":>7}')
for s in peer["stages"]:
    name, theirs = s["stage"], s["mean_ms"]
    if name in mine:
        print(f"{name:36} {mine[name]:12.2f} {theirs:10.2f} {mine[name] / theirs:7.2f}")
theirs = {s["stage"] for s in peer["stages"]}
for name, ms in mine.items():
    if name not in theirs and not name.startswith(("end to end", "backbone")):
        print(f"{name:36} {ms:12.2f} {'(veriface only)':>18}")
print(f'end to end, every model on every frame: veriface {ours["fps"]:.1f} frames/s '
      f'({ours["threads"]} thread(s)), peer {peer["fps"]:.1f} frames/s ({peer["runtime"]}); '
      f'ratio {peer["fps"] / ours["fps"]:.2f}x the peer\'s time')
print(f'end to end, veriface realtime schedule: {ours["realtime_fps"]:.1f} frames/s '
      f'(detector on {ours["realtime_detector_runs"]} of {ours["frames"]} frames, '
      f'{ours["realtime_analyses"]} face analyses run, {ours["realtime_reused"]} kept); '
      f'ratio {peer["fps"] / ours["realtime_fps"]:.2f}x the peer\'s time')
PY
if [ "$memory_seconds" != 0 ]; then
    python3 benches/run_memory.py --bin "$bin" --clip "$clip" --seconds "$memory_seconds"
fi
