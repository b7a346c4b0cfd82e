"""Frame I/O for the tools: images through imageio, videos through the ffmpeg program.

ffmpeg (libavcodec) is what the Rust runtime uses too: it decodes the H.264 High 4:4:4 Predictive
profile of the FaceForensics++ clips, which pure-Rust and openh264 decoders do not.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np


def read_rgb(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    img = iio.imread(path)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return img[..., :3].astype(np.float32)


def probe(path: Path) -> tuple[int, int]:
    """Frame size of the first video stream."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                          "stream=width,height", "-of", "json", str(path)],
                         check=True, capture_output=True, text=True).stdout
    s = json.loads(out)["streams"][0]
    return int(s["width"]), int(s["height"])


def sample_frames(path: Path, count: int, stride: int, start: int = 0):
    """Every `stride`-th frame from `start`, at most `count`, as float32 RGB arrays."""
    w, h = probe(path)
    vf = f"select='gte(n\\,{start})*not(mod(n-{start}\\,{stride}))'"
    cmd = ["ffmpeg", "-v", "error", "-i", str(path), "-vf", vf, "-vsync", "vfr", "-frames:v", str(count),
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    raw = subprocess.run(cmd, check=True, capture_output=True).stdout
    frames = np.frombuffer(raw, dtype=np.uint8).reshape(-1, h, w, 3)
    for f in frames:
        yield f.astype(np.float32)


def write_samples(dest: Path, clip_dir: Path) -> dict[str, Path]:
    """Bundled samples: skimage's public-domain astronaut, the CC0 cat, and a short clip of the
    astronaut, as H.264 (for the tests of the ffmpeg path, in clip_dir) and as Motion JPEG in AVI
    (in the samples: veriface decodes it in-process, so `analyze samples/` needs no ffmpeg)."""
    import skimage

    data = Path(skimage.__file__).parent / "data"
    dest.mkdir(parents=True, exist_ok=True)
    clip_dir.mkdir(parents=True, exist_ok=True)
    out = {"astronaut": dest / "astronaut.png", "chelsea": dest / "chelsea.png",
           "clip": clip_dir / "astronaut_zoom.mp4", "clip_mjpeg": dest / "astronaut_zoom.avi"}
    for key in ("astronaut", "chelsea"):
        if not out[key].exists():
            shutil.copyfile(data / f"{key}.png", out[key])
    if not out["clip"].exists():
        # 3 s at 10 fps: a slow zoom and pan, so the tracker and the smoothing have work to do.
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-loop", "1", "-i", str(out["astronaut"]), "-vf",
                        "zoompan=z='1+0.004*on':x='iw/2-(iw/zoom/2)+on':y='ih/2-(ih/zoom/2)':d=30:s=320x320:fps=10",
                        "-frames:v", "30", "-c:v", "libx264", "-threads", "1", "-pix_fmt", "yuv420p",
                        "-profile:v", "high", "-movflags", "+faststart", str(out["clip"])], check=True)
    if not out["clip_mjpeg"].exists():
        # The same 30 frames; q 3 keeps the frames within a few grey levels of the H.264 decode.
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(out["clip"]), "-c:v", "mjpeg", "-q:v", "3",
                        "-an", str(out["clip_mjpeg"])], check=True)
    return out
