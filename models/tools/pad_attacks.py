#!/usr/bin/env python3
"""Simulated presentation attacks for `veriface eval --task pad` (no attack footage is at hand).

    python models/tools/pad_attacks.py [--out models/tools/.cache/pad_eval] [--count 120]

Takes real face photos from ../shared/data/faces (DeepFace test set, LivePortrait driving frames,
DeepFaceLab stream frames: sources with frames of real cameras) and writes, into OUT (never into
the repository: the images derive from ../shared):

    live/             each photo re-captured: blur, sensor noise, JPEG (what a camera adds)
    attack/print/     the photo printed (ink range, halftone screen, paper grain, warm paper
                      white), held up in front of the camera with a border, tilted, re-captured
    attack/screen/    the photo shown on a screen (RGB sub-pixel stripes, moire from the
                      resampling, gamma and blue cast, bezel, glare), tilted, re-captured

Every class goes through the same re-capture, so what differs is the attack medium alone. The
renderings are simple physical models, not real attacks: figures measured on them say how a PAD
model reacts to these cues, not how it does against a real printer or phone (README says so).
Seeded: the same command writes the same files.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent.parent
FACES = REPO.parent / "shared" / "data" / "faces"
SOURCES = ("deepface_testset", "liveportrait_driving", "dfl_stream_src")


def recapture(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """What the kiosk camera adds to anything in front of it."""
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.0)))
    a = np.asarray(img).astype(np.float32)
    a += rng.normal(0, rng.uniform(1.5, 4.0), a.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=int(rng.integers(75, 92)))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def perspective(img: Image.Image, rng: np.random.Generator, strength: float) -> Image.Image:
    """A medium held at a slight angle: a random projective warp of its corners."""
    w, h = img.size
    d = strength * min(w, h)
    src = [(0, 0), (w, 0), (w, h), (0, h)]
    dst = [(x + rng.uniform(-d, d), y + rng.uniform(-d, d)) for x, y in src]
    # PIL wants the coefficients mapping output to input.
    a = []
    b = []
    for (x, y), (u, v) in zip(dst, src):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        b += [u, v]
    coeffs = np.linalg.solve(np.array(a), np.array(b))
    return img.transform((w, h), Image.PERSPECTIVE, tuple(coeffs), Image.BILINEAR, fillcolor=(0, 0, 0))


def in_scene(medium: Image.Image, background: Image.Image, rng: np.random.Generator, scale: float) -> Image.Image:
    """The medium held in front of a (blurred) room, filling `scale` of the frame."""
    w, h = medium.size
    bw, bh = int(w / scale), int(h / scale)
    bg = background.resize((bw, bh)).filter(ImageFilter.GaussianBlur(6))
    mask = Image.fromarray((np.asarray(medium).sum(axis=2) > 0).astype(np.uint8) * 255)
    x = int(rng.integers(0, max(1, bw - w)))
    y = int(rng.integers(0, max(1, bh - h)))
    bg.paste(medium, (x, y), mask)
    return bg


def printed(face: Image.Image, rng: np.random.Generator) -> Image.Image:
    a = np.asarray(face).astype(np.float32) / 255.0
    # Ink cannot reach black nor paper pure white; a warm paper tint; a halftone dot screen.
    black, white = rng.uniform(0.08, 0.16), rng.uniform(0.86, 0.94)
    a = black + (white - black) * a
    a *= np.array([1.0, 0.98, 0.92])
    h, w = a.shape[:2]
    period = rng.uniform(2.5, 4.0)
    yy, xx = np.mgrid[0:h, 0:w]
    screen = 0.5 + 0.5 * np.cos(2 * np.pi * (xx + yy) / period) * np.cos(2 * np.pi * (xx - yy) / period)
    a *= 1.0 - rng.uniform(0.05, 0.12) * screen[..., None]
    a += rng.normal(0, 0.02, (h, w, 1))  # paper grain
    border = int(0.12 * min(h, w))
    out = np.full((h + 2 * border, w + 2 * border, 3), white * np.array([1.0, 0.98, 0.92]))
    out[border:border + h, border:border + w] = a
    img = Image.fromarray((np.clip(out, 0, 1) * 255).astype(np.uint8))
    return perspective(img, rng, 0.06)


def on_screen(face: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = face.size
    # The panel's pixel grid: each pixel as R, G, B vertical stripes, at a pitch the camera
    # resamples to a non-integer scale (moire).
    a = np.asarray(face).astype(np.float32) / 255.0
    a = np.clip(a, 0, 1) ** rng.uniform(0.8, 0.95) * np.array([0.92, 0.97, 1.08])
    stripes = np.zeros((h, w * 3, 3), np.float32)
    for c in range(3):
        stripes[:, c::3, c] = np.clip(a[..., c], 0, 1)
    img = Image.fromarray((stripes * 255).astype(np.uint8)).resize(
        (int(w * rng.uniform(0.97, 1.03)), int(h * rng.uniform(0.97, 1.03))), Image.BILINEAR)
    # Each channel lit a third of the width: the panel's brightness gives it back.
    a = np.asarray(img).astype(np.float32) / 255.0 * 3.0 * rng.uniform(0.85, 0.95)
    hh, ww = a.shape[:2]
    # Glare: a bright soft spot somewhere on the glass.
    cy, cx = rng.uniform(0, hh), rng.uniform(0, ww)
    yy, xx = np.mgrid[0:hh, 0:ww]
    glare = np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.25 * max(hh, ww)) ** 2)))
    a = a + rng.uniform(0.05, 0.15) * glare[..., None]
    bezel = int(0.06 * min(hh, ww))
    out = np.full((hh + 2 * bezel, ww + 2 * bezel, 3), 0.04)
    out[bezel:bezel + hh, bezel:bezel + ww] = a
    img = Image.fromarray((np.clip(out, 0, 1) * 255).astype(np.uint8))
    return perspective(img, rng, 0.05)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=TOOLS / ".cache" / "pad_eval")
    ap.add_argument("--count", type=int, default=120, help="photos used (each gives one of every class)")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rows = [r for r in csv.DictReader(open(FACES / "files.csv"))
            if r["label"] == "real" and r["source"] in SOURCES and r["path"].lower().endswith((".jpg", ".png"))]
    rng = np.random.default_rng(args.seed)
    rows = [rows[i] for i in sorted(rng.choice(len(rows), size=min(args.count, len(rows)), replace=False))]
    for sub in ("live", "attack/print", "attack/screen"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
    backgrounds = [Image.open(FACES / r["path"]).convert("RGB") for r in rows[::7]]
    for i, r in enumerate(rows):
        face = Image.open(FACES / r["path"]).convert("RGB")
        name = f"{i:04d}_{Path(r['path']).stem}.jpg"
        recapture(face, rng).save(args.out / "live" / name, quality=95)
        bg = backgrounds[int(rng.integers(len(backgrounds)))]
        for kind, render in (("print", printed), ("screen", on_screen)):
            medium = render(face, rng)
            scene = in_scene(medium, bg, rng, rng.uniform(0.75, 0.95))
            recapture(scene, rng).save(args.out / "attack" / kind / name, quality=95)
    print(f"{len(rows)} photos -> {args.out}: live/, attack/print/, attack/screen/")


if __name__ == "__main__":
    sys.exit(main())
