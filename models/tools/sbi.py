"""Self-Blended Images (SBI): pseudo-fakes made from one real face, written from the paper.

Shiohara & Yamasaki, "Detecting Deepfakes with Self-Blended Images", CVPR 2022, section 3:
a source and a target are made from the same face; the source gets colour and frequency
perturbations and a small shift and scale; a mask is built from the convex hull of the facial
landmarks, deformed and blurred, and scaled by a random blend ratio; the pseudo-fake is
source * mask + target * (1 - mask). The blending boundary and the statistical mismatch it
leaves are the generic artefacts a face-swap or reenactment pipeline also leaves.

This file is an independent implementation from the paper's description (the authors' code is
non-commercial and is not used). Parameters are sampled once per clip and either held or drifted
linearly across its frames, so the temporal model sees both steady and flickering blends.

Images are float32 HxWx3 RGB arrays in [0, 255]; landmarks are Nx2 (x, y) pixel coordinates.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull
from skimage.color import hsv2rgb, rgb2hsv
from skimage.draw import polygon

# Blend ratios from the paper: full blends three times as likely as each partial one.
BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)


def sample_params(rng: np.random.Generator, size: int) -> dict:
    """One draw of every random choice SBI makes for an image of side `size`."""
    return {
        # Which copy is perturbed: the paper perturbs either source or target.
        "perturb_source": bool(rng.random() < 0.5),
        "rgb_shift": rng.uniform(-20, 20, 3),
        "hue": rng.uniform(-0.03, 0.03), "sat": rng.uniform(-0.15, 0.15), "val": rng.uniform(-0.1, 0.1),
        "brightness": rng.uniform(-0.1, 0.1) * 255, "contrast": rng.uniform(0.9, 1.1),
        # Frequency: 0 none, 1 down-up sampling (blur), 2 sharpen.
        "frequency": int(rng.choice(3, p=(0.4, 0.3, 0.3))), "down": rng.uniform(1.5, 4.0), "sharpen": rng.uniform(0.3, 1.0),
        "scale": rng.uniform(0.95, 1.05), "shift": rng.uniform(-0.03, 0.03, 2) * size,
        "hull_scale": rng.uniform(0.85, 1.1),
        "elastic_amp": rng.uniform(0.0, 0.04) * size, "elastic_seed": int(rng.integers(1 << 31)),
        "blur1": rng.uniform(0.01, 0.035) * size, "blur2": rng.uniform(0.01, 0.03) * size,
        "ratio": float(rng.choice(BLEND_RATIOS)),
    }


def interpolate(a: dict, b: dict, t: float) -> dict:
    """Continuous parameters drift from a to b; discrete choices stay those of a."""
    out = dict(a)
    for k, v in a.items():
        if k in ("perturb_source", "frequency", "elastic_seed", "ratio"):
            continue
        out[k] = (1 - t) * np.asarray(v, dtype=np.float64) + t * np.asarray(b[k], dtype=np.float64)
    return out


def perturb(img: np.ndarray, p: dict) -> np.ndarray:
    """Colour and frequency perturbation (the paper's source-target generator transforms)."""
    out = img + p["rgb_shift"][None, None, :]
    hsv = rgb2hsv(np.clip(out, 0, 255) / 255.0)
    hsv[..., 0] = (hsv[..., 0] + p["hue"]) % 1.0
    hsv[..., 1] = np.clip(hsv[..., 1] * (1 + p["sat"]), 0, 1)
    hsv[..., 2] = np.clip(hsv[..., 2] + p["val"], 0, 1)
    out = hsv2rgb(hsv) * 255.0
    out = (out - 127.5) * p["contrast"] + 127.5 + p["brightness"]
    if p["frequency"] == 1:
        small = ndimage.zoom(out, (1 / p["down"], 1 / p["down"], 1), order=1)
        zoom = (out.shape[0] / small.shape[0], out.shape[1] / small.shape[1], 1)
        out = ndimage.zoom(small, zoom, order=1)[: img.shape[0], : img.shape[1]]
    elif p["frequency"] == 2:
        blurred = ndimage.gaussian_filter(out, sigma=(1.0, 1.0, 0))
        out = out + p["sharpen"] * (out - blurred)
    return np.clip(out, 0, 255).astype(np.float32)


def shift_scale(img: np.ndarray, p: dict) -> np.ndarray:
    """Scale about the centre and translate: the source no longer lines up with the target."""
    h, w = img.shape[:2]
    centre = np.array([h / 2, w / 2])
    inv = 1.0 / p["scale"]
    # Output pixel o samples input pixel centre + (o - centre - shift) / scale.
    shift = np.array([p["shift"][1], p["shift"][0]])
    offset = centre - (centre + shift) * inv
    return np.stack([ndimage.affine_transform(img[..., c], [inv, inv], offset=offset, order=1, mode="nearest")
                     for c in range(3)], axis=-1).astype(np.float32)


def mask(landmarks: np.ndarray, shape: tuple[int, int], p: dict) -> np.ndarray:
    """Deformed, blurred landmark-hull mask in [0, ratio] (the paper's mask generator)."""
    h, w = shape
    hull = landmarks[ConvexHull(landmarks).vertices]
    centre = hull.mean(0)
    hull = centre + (hull - centre) * p["hull_scale"]
    m = np.zeros((h, w), np.float32)
    rr, cc = polygon(hull[:, 1], hull[:, 0], shape=(h, w))
    m[rr, cc] = 1.0
    if p["elastic_amp"] > 0:
        # Smooth random displacement field: the hull edge wobbles like a real blending mask.
        noise = np.random.default_rng(p["elastic_seed"]).standard_normal((2, h, w)).astype(np.float32)
        field = np.stack([ndimage.gaussian_filter(n, sigma=w / 12) for n in noise])
        field *= p["elastic_amp"] / (np.abs(field).max() + 1e-6)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        m = ndimage.map_coordinates(m, [yy + field[0], xx + field[1]], order=1, mode="constant")
    # First blur, then keep only the fully-inside part, then a second blur: a soft inner edge.
    m = ndimage.gaussian_filter(m, p["blur1"])
    m[m < 0.999] = 0.0
    m = ndimage.gaussian_filter(m, p["blur2"])
    peak = m.max()
    if peak > 0:
        m /= peak
    return (m * p["ratio"]).astype(np.float32)


def self_blend(img: np.ndarray, landmarks: np.ndarray, p: dict) -> tuple[np.ndarray, np.ndarray]:
    """One self-blended image and its mask."""
    if p["perturb_source"]:
        source, target = perturb(img, p), img
    else:
        source, target = img, perturb(img, p)
    source = shift_scale(source, p)
    m = mask(landmarks, img.shape[:2], p)[..., None]
    return (source * m + target * (1 - m)).astype(np.float32), m[..., 0]


def self_blend_clip(frames: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator,
                    drift: bool) -> np.ndarray:
    """A pseudo-fake clip: one parameter draw held across frames, or drifting to a second draw."""
    size = frames.shape[1]
    a = sample_params(rng, size)
    b = sample_params(rng, size) if drift else a
    out = np.empty_like(frames)
    n = len(frames)
    for i in range(n):
        p = interpolate(a, b, i / max(1, n - 1)) if drift else a
        blended, _ = self_blend(frames[i].astype(np.float32), landmarks[i], p)
        out[i] = np.clip(blended + 0.5, 0, 255).astype(frames.dtype)
    return out
