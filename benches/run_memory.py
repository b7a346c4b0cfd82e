#!/usr/bin/env python3
"""Cold start and peak memory of the daemon: `veriface run --source CLIP --loop` for N seconds.

Cold start is process start to the first verdict line on stdout (models loaded, first frame
analysed); the run is done twice and the second start is reported, so the model files come
from the page cache ("models cached"). Peak RSS is the kernel's VmHWM of the process, read just
before SIGTERM. Standard library only.

    python3 benches/run_memory.py [--bin target/release/veriface] [--clip FILE] [--seconds 60]
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def vm_kib(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def one_run(binary: Path, clip: Path, seconds: float, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "veriface.toml"
        # Built-in defaults, with the status file and records kept inside the scratch folder.
        config.write_text(f'[status]\npath = "{tmp}/status.json"\n[records]\nenabled = true\ndir = "{tmp}/records"\n')
        start = time.perf_counter()
        proc = subprocess.Popen(
            [str(binary), "run", "--config", str(config), "--source", str(clip), "--loop", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        first_verdict: list[float] = []
        lines = [0]

        def read_stdout() -> None:
            for _ in proc.stdout:
                if not first_verdict:
                    first_verdict.append(time.perf_counter() - start)
                lines[0] += 1

        reader = threading.Thread(target=read_stdout, daemon=True)
        reader.start()
        samples = []
        while time.perf_counter() - start < seconds and proc.poll() is None:
            rss = vm_kib(proc.pid, "VmRSS")
            if rss:
                samples.append(rss)
            time.sleep(0.5)
        if proc.poll() is not None:
            sys.exit(f"veriface run ended early (exit {proc.returncode}): {proc.stderr.read().strip()}")
        peak = vm_kib(proc.pid, "VmHWM")
        proc.send_signal(signal.SIGTERM)
        stopped = proc.wait(timeout=10)
        reader.join(timeout=2)
        return {
            "cold_start_s": first_verdict[0] if first_verdict else None,
            "peak_rss_mib": peak / 1024 if peak else None,
            "steady_rss_mib": samples[-1] / 1024 if samples else None,
            "verdict_lines": lines[0],
            "seconds": seconds,
            "exit": stopped,
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "veriface"))
    ap.add_argument("--clip", default=str(ROOT / "samples" / "astronaut_zoom.avi"))
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--json", action="store_true")
    args, extra = ap.parse_known_args()
    binary, clip = Path(args.bin), Path(args.clip)
    if not binary.is_file():
        sys.exit(f"{binary}: no such binary (cargo build --release first)")
    # First run warms the page cache (short); the second is the one reported.
    one_run(binary, clip, min(5.0, args.seconds), extra)
    result = one_run(binary, clip, args.seconds, extra)
    result["clip"] = str(clip)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    cold = result["cold_start_s"]
    print(f"cold start (process start to first verdict, models cached): "
          f"{cold * 1e3:.0f} ms" if cold is not None else "cold start: no verdict line")
    print(f"peak RSS over {args.seconds:.0f} s: {result['peak_rss_mib']:.1f} MiB "
          f"(last sample {result['steady_rss_mib']:.1f} MiB), {result['verdict_lines']} verdict lines, "
          f"exit {result['exit']} after SIGTERM")


if __name__ == "__main__":
    main()
