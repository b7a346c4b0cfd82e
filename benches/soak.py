#!/usr/bin/env python3
"""Soak: `veriface run --source DIR --loop` for a stated time, sampling what grows in a daemon.

Every --every seconds: RSS, the heap in use (the status file's heap_kib: glibc's count of what
the allocator handed out), open file descriptors, threads, the records folder's size, frames
analysed, frames per second and the last frame's latency (status file). At the end: the slope of
each after a warm-up (least squares, per hour), the median latency and fps of the first and last
quarter, and the number of face tracks the daemon saw (from its records). Standard library only.

Two sources (folders of symbolic links, built in a scratch folder; nothing is copied):
  people       (default) the FF++ videos and face images in ../shared, played in real time:
               many different people, as a kiosk sees them;
  accelerated  every face image in ../shared for 3 frames then 12 empty frames, at 30 fps: each
               person is a new track that ends (the tracker forgets a face after 10 frames
               unseen), about 7,000 tracks an hour instead of a kiosk's few hundred a day.

    python3 benches/soak.py [--mode people|accelerated] [--minutes 30] [--every 10]
                            [--bin target/release/veriface] [--csv FILE]
"""

import argparse
import csv
import json
import os
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

from run_memory import vm_kib  # /proc/PID/status fields, in kB (or a count)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
IMAGES = (".jpg", ".jpeg", ".png")


def blank_png(path: Path, width: int = 200, height: int = 200) -> None:
    """A mid-grey PNG: a frame with no face in it."""
    row = b"\x00" + b"\x80" * (width * 3)
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(row * height)) + chunk(b"IEND", b""))


def link(folder: Path, index: int, target: Path) -> None:
    (folder / f"{index:07d}{target.suffix.lower()}").symlink_to(target.resolve())


def build_source(mode: str, folder: Path) -> int:
    faces = sorted(p for p in (SHARED / "faces").rglob("*") if p.suffix.lower() in IMAGES)
    if not faces:
        sys.exit(f"{SHARED / 'faces'}: no face images (is ../shared beside the repo?)")
    n = 0
    if mode == "people":
        videos = sorted((SHARED / "faceforensics").rglob("*.mp4"))
        # Interleaved so people change every item: a video, then a few images.
        for i, v in enumerate(videos):
            link(folder, n, v)
            n += 1
            for f in faces[4 * i:4 * i + 4]:
                link(folder, n, f)
                n += 1
        return n
    blank = folder.parent / "blank.png"
    blank_png(blank)
    for f in faces:
        for _ in range(3):
            link(folder, n, f)
            n += 1
        for _ in range(12):
            link(folder, n, blank)
            n += 1
    return n


def slope_per_hour(ts: list[float], ys: list[float]) -> float:
    if len(ts) < 2:
        return 0.0
    mt, my = statistics.fmean(ts), statistics.fmean(ys)
    var = sum((t - mt) ** 2 for t in ts)
    return 0.0 if var == 0 else sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / var * 3600


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=["people", "accelerated"], default="people")
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--warmup", type=float, default=0.2, help="share of the run left out of slopes")
    ap.add_argument("--bin", type=Path, default=ROOT / "target/release/veriface")
    ap.add_argument("--csv", type=Path, help="write every sample here")
    args = ap.parse_args()
    if not args.bin.exists():
        sys.exit(f"{args.bin}: not built (cargo build --release)")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = tmp / "source"
        source.mkdir()
        items = build_source(args.mode, source)
        fps = 30.0 if args.mode == "accelerated" else 10.0
        config = tmp / "veriface.toml"
        config.write_text(f'device_id = "soak"\n[camera]\nfps = {fps}\n'
                          f'[status]\npath = "{tmp}/status.json"\ninterval_s = 1.0\n'
                          f'[records]\ndir = "{tmp}/records"\n')
        print(f"soak: {args.mode}, {items} items, {args.minutes:g} min, sample every {args.every:g} s",
              file=sys.stderr)
        proc = subprocess.Popen(
            [str(args.bin), "run", "--config", str(config), "--source", str(source), "--loop", "--quiet"],
            stdout=subprocess.DEVNULL, stderr=open(tmp / "stderr.log", "w"), cwd=ROOT)
        start = time.monotonic()
        samples = []
        try:
            while time.monotonic() - start < args.minutes * 60:
                time.sleep(args.every)
                if proc.poll() is not None:
                    sys.exit(f"veriface run ended early (exit {proc.returncode}): "
                             f"{(tmp / 'stderr.log').read_text().strip()[-500:]}")
                try:
                    status = json.loads((tmp / "status.json").read_text())
                except (OSError, ValueError):
                    status = {}
                records = sum(p.stat().st_size for p in (tmp / "records").glob("*.vfr"))
                s = {
                    "t_s": round(time.monotonic() - start, 1),
                    "rss_kib": vm_kib(proc.pid, "VmRSS") or 0,
                    # Anonymous (heap, arenas, stacks) vs file-backed (the binary's pages as they
                    # are first run): a step in the second is not memory the daemon holds.
                    "rss_anon_kib": vm_kib(proc.pid, "RssAnon") or 0,
                    "rss_file_kib": vm_kib(proc.pid, "RssFile") or 0,
                    # What the allocator has handed out (glibc mallinfo): flat while the RSS
                    # steps up means arenas or fragmentation, not a leak.
                    "heap_kib": status.get("heap_kib") or 0,
                    "fds": len(os.listdir(f"/proc/{proc.pid}/fd")),
                    "threads": vm_kib(proc.pid, "Threads") or 0,
                    "records_kib": records // 1024,
                    "frames": status.get("frames", 0),
                    "fps": round(status.get("fps", 0.0), 1),
                    # The last analysed frame's time (frames whose analysis is reused cost ~0.1 ms).
                    "latency_ms": round(status.get("stage_ms", {}).get("total", 0.0), 3),
                }
                samples.append(s)
                print("  ".join(f"{k}={v}" for k, v in s.items()), file=sys.stderr, flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
        decoded = subprocess.run([str(args.bin), "log", "decode", str(tmp / "records")],
                                 capture_output=True, text=True).stdout
        tracks = {json.loads(l).get("track") for l in decoded.splitlines() if '"event":"face"' in l}
        tracks.discard(None)

    if args.csv:
        with args.csv.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(samples[0]))
            w.writeheader()
            w.writerows(samples)
    steady = [s for s in samples if s["t_s"] >= args.warmup * args.minutes * 60]
    ts = [s["t_s"] for s in steady]
    quarter = max(1, len(samples) // 4)
    lat = lambda part: [s["latency_ms"] for s in part if s["latency_ms"] > 0] or [0.0]
    summary = {
        "mode": args.mode,
        "minutes": args.minutes,
        "samples": len(samples),
        "frames_analysed": samples[-1]["frames"] if samples else 0,
        "face_tracks": len(tracks),
        "rss_mib_start_end": [round(steady[0]["rss_kib"] / 1024, 1), round(steady[-1]["rss_kib"] / 1024, 1)] if steady else None,
        "rss_mib_per_hour": round(slope_per_hour(ts, [s["rss_kib"] / 1024 for s in steady]), 2),
        "rss_anon_mib_start_end": [round(steady[0]["rss_anon_kib"] / 1024, 1), round(steady[-1]["rss_anon_kib"] / 1024, 1)] if steady else None,
        "heap_mib_start_end": [round(steady[0]["heap_kib"] / 1024, 1), round(steady[-1]["heap_kib"] / 1024, 1)] if steady else None,
        "heap_mib_per_hour": round(slope_per_hour(ts, [s["heap_kib"] / 1024 for s in steady]), 2),
        "fds_min_max": [min(s["fds"] for s in samples), max(s["fds"] for s in samples)],
        "fds_per_hour": round(slope_per_hour(ts, [s["fds"] for s in steady]), 2),
        "threads_min_max": [min(s["threads"] for s in samples), max(s["threads"] for s in samples)],
        "records_kib_per_hour": round(slope_per_hour(ts, [s["records_kib"] for s in steady]), 1),
        "latency_ms_median_first_last_quarter": [statistics.median(lat(samples[:quarter])),
                                                 statistics.median(lat(samples[-quarter:]))],
        "fps_median_first_last_quarter": [statistics.median(s["fps"] for s in samples[:quarter]),
                                          statistics.median(s["fps"] for s in samples[-quarter:])],
        "exit": code,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
