#!/usr/bin/env python3
"""Guest instructions per tract node for models under qemu-aarch64, to see where an int8 form
loses to f32 on the boards' cores.

    python3 benches/arm/node_insns.py [--bin BIN] [--cpus cortex-a72 cortex-a76] KEY [KEY ...]

Runs `veriface bench --model KEY --profile --mark-nodes --iterations 1 --json` under
`qemu-aarch64 -cpu CPU` with the TCG plugin benches/arm/insn_count.c, which attributes the
instructions between each node's start and end markers to that node (one inference after a
warm-up; load and planning are outside the markers). Prints, per CPU, instructions per operator
kind (tract's operator and its output type) for every model side by side, then each model's
costliest nodes; writes target/arm-node-insns.json (--out). Models come from VERIFACE_MODELS like every
other veriface command (benches/arm/int8_variants.py writes the experimental forms' manifest).
Instructions are not cycles: see README's "int8 against f32 on the boards' CPUs".
"""

import argparse
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def plugin() -> Path:
    out = ROOT / "target" / "insn_count.so"
    src = ROOT / "benches" / "arm" / "insn_count.c"
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-Wall", "-o", str(out), str(src)], check=True)
    return out


def count(binary: Path, cpu: str, key: str, extra: list[str]) -> dict:
    cmd = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", "-cpu", cpu, "-plugin", str(plugin()),
           "-d", "plugin", str(binary), "bench", "--model", key, "--profile", "--mark-nodes",
           "--iterations", "1", "--json", *extra]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"{key} on {cpu}: veriface failed: {run.stderr.strip().splitlines()[-1:]}")
    counted = {}
    for line in run.stderr.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "node":
            counted[int(parts[1])] = int(parts[2])
    nodes = json.loads(run.stdout)["nodes"]
    for node in nodes:
        node["insns"] = counted.get(node["id"], 0)
    if not counted:
        sys.exit(f"{key} on {cpu}: no node markers counted (is {binary} built with --mark-nodes?)")
    return {"total": sum(counted.values()), "nodes": nodes}


def kind(node: dict) -> str:
    return f"{node['op']} {node['output_type']}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("keys", nargs="+", metavar="KEY", help="manifest model keys")
    ap.add_argument("--bin", type=Path,
                    default=ROOT / "target/aarch64-unknown-linux-gnu/release-nolto/veriface")
    ap.add_argument("--cpus", nargs="+", default=["cortex-a72", "cortex-a76"])
    ap.add_argument("--top", type=int, default=12, help="costliest nodes listed per model")
    ap.add_argument("--out", type=Path, default=ROOT / "target" / "arm-node-insns.json")
    ap.add_argument("--bench-args", default="", help="more `veriface bench` flags, e.g. --tract-layout nchw")
    args = ap.parse_args()
    if not args.bin.exists():
        sys.exit(f"{args.bin}: missing (cargo --config cross/config.toml build --profile release-nolto "
                 "--target aarch64-unknown-linux-gnu --no-default-features)")
    results = {}
    for cpu in args.cpus:
        results[cpu] = {}
        for key in args.keys:
            print(f"counting {key} on {cpu} ...", file=sys.stderr, flush=True)
            results[cpu][key] = count(args.bin, cpu, key, args.bench_args.split())
    out = args.out.resolve()
    out.write_text(json.dumps(results, indent=1))

    for cpu, models in results.items():
        print(f"\n### {cpu}: million guest instructions per inference, by tract operator and output type\n")
        per_kind = {k: defaultdict(int) for k in models}
        for key, r in models.items():
            for node in r["nodes"]:
                per_kind[key][kind(node)] += node["insns"]
        kinds = sorted({k for m in per_kind.values() for k in m},
                       key=lambda k: -max(m.get(k, 0) for m in per_kind.values()))
        print("| operator | " + " | ".join(models) + " |")
        print("|---|" + "---:|" * len(models))
        for k in kinds:
            if max(m.get(k, 0) for m in per_kind.values()) < 1e6:
                continue
            print(f"| {k} | " + " | ".join(f"{per_kind[key].get(k, 0) / 1e6:.1f}" for key in models) + " |")
        print("| **all nodes** | " + " | ".join(f"**{r['total'] / 1e6:.1f}**" for r in models.values()) + " |")
        for key, r in models.items():
            print(f"\n{key} on {cpu}, costliest nodes (M instructions):")
            for node in sorted(r["nodes"], key=lambda n: -n["insns"])[:args.top]:
                print(f"  {node['insns'] / 1e6:8.2f}  {kind(node):28} {str(node['output_shape']):20} {node['name']}")
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()
