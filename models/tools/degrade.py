"""Randomised image degradations, applied alike to real, fake and self-blended training faces.

Why: a detector trained on sharp pseudo-fakes and soft, compressed real video learns "sharp and
clean means fake" and calls every good photograph a deepfake. Giving both classes the same spread
of quality (resolution, blur, sharpening, noise, gamma, colour, JPEG) leaves the blend boundary as
the only signal that separates them.

Images are uint8 HxWx3 RGB arrays; every choice comes from the caller's generator (repeatable).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter


def _pil(x: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(x + 0.5, 0, 255).astype(np.uint8))


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    _pil(img.astype(np.float32)).save(buf, format="JPEG", quality=int(quality))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def sharpen(img: np.ndarray, amount: float, radius: float = 1.0) -> np.ndarray:
    """Unsharp mask: img + amount * (img - blur(img))."""
    x = img.astype(np.float32)
    blurred = np.asarray(_pil(x).filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)
    return np.clip(x + amount * (x - blurred) + 0.5, 0, 255).astype(np.uint8)


def degrade(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random chain: colour/gamma, resolution, blur or sharpen, noise, JPEG (each optional)."""
    h, w = img.shape[:2]
    x = img.astype(np.float32)
    if rng.random() < 0.5:
        x = 255.0 * (np.clip(x, 0, 255) / 255.0) ** rng.uniform(0.7, 1.4)
    if rng.random() < 0.5:
        x = x * rng.uniform(0.9, 1.1, 3)[None, None, :] + rng.uniform(-10, 10, 3)[None, None, :]
    if rng.random() < 0.4:
        f = rng.uniform(1.5, 3.5)
        small = _pil(x).resize((max(8, int(w / f)), max(8, int(h / f))), Image.BILINEAR)
        x = np.asarray(small.resize((w, h), Image.BICUBIC), dtype=np.float32)
    r = rng.random()
    if r < 0.25:
        x = np.asarray(_pil(x).filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5))), dtype=np.float32)
    elif r < 0.5:
        x = sharpen(x, rng.uniform(0.3, 1.5)).astype(np.float32)
    if rng.random() < 0.3:
        x = x + rng.normal(0, rng.uniform(1, 8), x.shape)
    out = np.clip(x + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < 0.7:
        out = jpeg(out, int(rng.integers(30, 101)))
    return out
