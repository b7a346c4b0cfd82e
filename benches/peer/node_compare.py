#!/usr/bin/env python3
"""Where one model's time goes under tract against onnxruntime, by kind of work, side by side.

    python3 benches/peer/node_compare.py [--bin target/release/veriface] [--runs N] KEY [KEY ...]

For each manifest model: `veriface bench --model KEY --profile --json` (tract, one thread, zero
inputs) and the same file under onnxruntime (one thread, its default graph optimisations, zero
inputs, per-node profiling), alternately in one run. Both runtimes fuse and rename nodes
differently, so the nodes are grouped into kinds of work that both have: depthwise convolutions,
the other convolutions and matrix products (with tract's packing and im2col), element-wise and
activation passes, pooling and reductions, layout and padding. Prints each kind's mean ms per
inference and the tract/onnxruntime ratio. Run on an idle machine; compare ratios, not times.
Needs onnxruntime and numpy (benches/peer/requirements.txt; compare.sh makes that venv).
"""

import argparse
import json
import subprocess
import sys
import tempfile
import tomllib
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[2]
KINDS = ["depthwise conv", "other conv / matmul", "element-wise", "pooling / reduce", "layout / padding", "other"]

TRACT_KIND = {
    "DepthWiseConv": "depthwise conv",
    # veriface's own ops (src/infer/depthwise.rs, pointwise.rs, maxpool.rs); the few-input
    # convolution is the RGB stem, a convolution like the matrix products it replaced.
    "VerifaceDepthwiseNhwc": "depthwise conv", "VerifaceDepthwiseNchw": "depthwise conv",
    "VerifaceFewInputConvNhwc": "other conv / matmul", "VerifacePointwiseNhwc": "other conv / matmul",
    "VerifaceMaxPool": "pooling / reduce",
    "OptMatMul": "other conv / matmul", "OptMatMulPack": "other conv / matmul",
    "LazyIm2col": "other conv / matmul", "Im2col": "other conv / matmul",
    "OptMaxPool": "pooling / reduce", "OptSumPool": "pooling / reduce", "Reduce<Sum>": "pooling / reduce",
    "Reduce<Max>": "pooling / reduce", "Softmax": "other",
    "MoveAxis": "layout / padding", "Pad": "layout / padding", "IntoShape": "layout / padding",
    "Downsample": "layout / padding", "Source": "other", "Const": "other",
}
ORT_KIND = {
    "MaxPool": "pooling / reduce", "AveragePool": "pooling / reduce", "GlobalAveragePool": "pooling / reduce",
    "ReduceMean": "pooling / reduce", "ReduceSum": "pooling / reduce", "Softmax": "other",
    "Transpose": "layout / padding", "Pad": "layout / padding", "Reshape": "layout / padding",
    "Flatten": "layout / padding", "Squeeze": "layout / padding", "Unsqueeze": "layout / padding",
    "Gemm": "other conv / matmul", "MatMul": "other conv / matmul",
}


def tract_kind(op: str) -> str:
    if op in TRACT_KIND:
        return TRACT_KIND[op]
    if op.startswith(("OptBin", "Opt", "Add", "Mul", "Max", "Min", "Sub", "Sigmoid", "Tanh")):
        return "element-wise"
    return "other"


def ort_kind(op: str, node: str, groups: dict) -> str:
    if op in ("Conv", "FusedConv", "NhwcFusedConv", "QLinearConv"):
        return "depthwise conv" if groups.get(node, 1) > 1 else "other conv / matmul"
    if op in ORT_KIND:
        return ORT_KIND[op]
    if op in ("Clip", "Relu", "Add", "Mul", "Sub", "Div", "Max", "Min", "Sigmoid", "Tanh", "Sum", "BiasGelu"):
        return "element-wise"
    return "other"


def tract_profile(binary: Path, key: str, runs: int) -> tuple[dict, float]:
    out = subprocess.run([str(binary), "bench", "--model", key, "--profile", "--json", "--iterations", str(runs)],
                         cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{key}: veriface failed: {out.stderr.strip()}")
    doc = json.loads(out.stdout)
    kinds = defaultdict(float)
    for node in doc["nodes"]:
        kinds[tract_kind(node["op"])] += node["mean_ms"]
    return kinds, doc["total_ms"]


def ort_profile(path: Path, spec: dict, runs: int) -> tuple[dict, float]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        # The profile names the nodes of onnxruntime's rewritten graph (fused, NCHWc): read the
        # convolutions' groups from that graph, not from the file.
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        model = onnx.load(opts.optimized_model_filepath)
        groups = {n.name: next((a.i for a in n.attribute if a.name == "group"), 1) for n in model.graph.node}
        feeds = {i["name"]: np.zeros(i["shape"], np.float32)
                 for i in [spec["input"], *spec.get("extra_inputs", [])]}
        for _ in range(runs + 1):
            sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    run_starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    first_counted = run_starts[1] if len(run_starts) > 1 else 0
    kinds = defaultdict(float)
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or e["ts"] < first_counted:
            continue
        node = e["name"].removesuffix("_kernel_time")
        kinds[ort_kind(e["args"].get("op_name", ""), node, groups)] += e["dur"] / 1e3 / runs
    return kinds, sum(kinds.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("keys", nargs="+", metavar="KEY")
    ap.add_argument("--bin", type=Path, default=ROOT / "target/release/veriface")
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    if not args.bin.exists():
        sys.exit(f"{args.bin}: missing (cargo build --release)")
    manifest = tomllib.loads((ROOT / "models" / "manifest.toml").read_text())
    for key in args.keys:
        spec = manifest["models"][key]
        tract, tract_total = tract_profile(args.bin, key, args.runs)
        theirs, ort_total = ort_profile(ROOT / "models" / spec["file"], spec, args.runs)
        print(f"\n{key}: mean ms per inference over {args.runs} runs, one thread, sum of node times")
        print(f"| kind of work | tract | onnxruntime | ratio |\n|---|---:|---:|---:|")
        for kind in KINDS:
            a, b = tract.get(kind, 0.0), theirs.get(kind, 0.0)
            if a < 0.005 and b < 0.005:
                continue
            ratio = f"{a / b:.2f}" if b > 0.005 else "—"
            print(f"| {kind} | {a:.2f} | {b:.2f} | {ratio} |")
        print(f"| **all nodes** | **{tract_total:.2f}** | **{ort_total:.2f}** | **{tract_total / ort_total:.2f}** |")


if __name__ == "__main__":
    main()
