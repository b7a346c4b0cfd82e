#!/usr/bin/env python3
"""Passive presentation-attack detection (PAD): the crop spec, models/pad.toml, golden references.

    python models/tools/pad.py [--pad-dir ../shared/models/pad] [--converted-dir models/tools/.cache/pad]

PAD weights are never part of the repository (the ones in ../shared are evaluation weights under
research terms; a customer installs their own licensed model). What the repository holds is the
description of each known PAD model in models/pad.toml (sha256, input, crop, classes, licence),
which the runtime checks a configured model file against, and golden references: the crop
tensors of the sample image (ours) and the logits onnxruntime gives for them.

The crop (the Rust twin is `frame::crop_resize_reflect_into`): a square of `crop_scale` x the
longer side of the face box around its centre; pixels outside the frame mirror the frame
(numpy's "reflect", OpenCV's BORDER_REFLECT_101), as the publisher pads; then the one resize
(preprocess.crop_resize), RGB / 255.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
MODELS = TOOLS.parent
REPO = MODELS.parent
GOLDEN = MODELS / "golden"
DEFAULT_PAD_DIR = REPO.parent / "shared" / "models" / "pad"

sys.path.insert(0, str(TOOLS))
import manifest as mf  # noqa: E402
import media  # noqa: E402
import preprocess as pp  # noqa: E402

CELEBASPOOF_TERMS = {
    "licence": "Apache-2.0 (weights and code); trained on CelebA-Spoof, non-commercial research terms: an evaluation model",
    "source": "MiniFASNetV2-SE 128 px (ONNX opset 13), as provided in ../shared/models/pad (not redistributed)",
    "training_data": "CelebA-Spoof (non-commercial research)",
}
SILENTFACE_TERMS = {
    "licence": "Apache-2.0 (weights and code); trained on the publisher's undisclosed in-house data: used here as an evaluation model",
    "source": "Silent-Face-Anti-Spoofing state dict in ../shared/models/pad, converted by models/tools/minifasnet.py (not redistributed)",
    "training_data": "undisclosed in-house data of the publisher (minivision)",
}
# The 80 px models' files are ONNX conversions that models/tools/minifasnet.py writes into
# --converted-dir (from the state dicts in ../shared; never committed). Input raw 0-255 RGB.
CONVERTED = {"minifasnetv2_80", "minifasnetv1se_80"}
PAD_MODELS = {
    "minifasnetv2se_128": {
        "file": "minifasnetv2se_128_celebaspoof.onnx", "task": "pad",
        "description": "MiniFASNetV2-SE: a face crop -> logits [live, spoof]",
        "input": {"name": "input", "shape": [1, 3, 128, 128], "layout": "NCHW", "dtype": "f32", "colour": "RGB"},
        "normalise": {"mean": 0.0, "std": 255.0}, "crop_scale": 1.5, "outputs": ["output"],
        "classes": ["live", "spoof"], **CELEBASPOOF_TERMS},
    "minifasnetv2se_128_int8": {
        "file": "minifasnetv2se_128_celebaspoof_int8.onnx", "task": "pad", "variant_of": "minifasnetv2se_128",
        "description": "the same, dynamic int8 (ConvInteger, MatMulInteger, DynamicQuantizeLinear)",
        "input": {"name": "input", "shape": [1, 3, 128, 128], "layout": "NCHW", "dtype": "f32", "colour": "RGB"},
        "normalise": {"mean": 0.0, "std": 255.0}, "crop_scale": 1.5, "outputs": ["output"],
        "classes": ["live", "spoof"], **CELEBASPOOF_TERMS},
    "minifasnetv2_80": {
        "file": "minifasnetv2_80_silentface.onnx", "task": "pad",
        "description": "MiniFASNetV2 80 px (Silent-Face): a face crop 2.7 x the box -> logits [spoof, live, spoof]",
        "input": {"name": "input", "shape": [1, 3, 80, 80], "layout": "NCHW", "dtype": "f32", "colour": "RGB"},
        "normalise": {"mean": 0.0, "std": 1.0}, "crop_scale": 2.7, "outputs": ["output"],
        "classes": ["spoof", "live", "spoof_other"], **SILENTFACE_TERMS},
    "minifasnetv1se_80": {
        "file": "minifasnetv1se_80_silentface.onnx", "task": "pad",
        "description": "MiniFASNetV1-SE 80 px (Silent-Face): a face crop 4.0 x the box -> logits [spoof, live, spoof]",
        "input": {"name": "input", "shape": [1, 3, 80, 80], "layout": "NCHW", "dtype": "f32", "colour": "RGB"},
        "normalise": {"mean": 0.0, "std": 1.0}, "crop_scale": 4.0, "outputs": ["output"],
        "classes": ["spoof", "live", "spoof_other"], **SILENTFACE_TERMS},
}


def model_path(key: str, pad_dir: Path, converted_dir: Path) -> Path:
    return (converted_dir if key in CONVERTED else pad_dir) / PAD_MODELS[key]["file"]


def reflect_crop(img: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
    """The square [x0, x0+side) x [y0, y0+side), mirrored where it leaves the frame."""
    h, w = img.shape[:2]
    ys = np.arange(y0, y0 + side)
    xs = np.arange(x0, x0 + side)


    def mirror(i: np.ndarray, n: int) -> np.ndarray:
        if n == 1:
            return np.zeros_like(i)
        period = 2 * (n - 1)
        i = np.abs(i) % period
        return np.where(i >= n, period - i, i)

    return img[mirror(ys, h)][:, mirror(xs, w)]


def pad_input(img: np.ndarray, region: tuple[int, int, int], size: int, std: float = 255.0) -> np.ndarray:
    """The resize reads the mirrored frame past the region's edges too (its filter taps reach a
    few pixels out), so a margin wider than the taps is mirrored with it."""
    x0, y0, side = region
    m = -(-side // size) + 2
    crop = reflect_crop(img.astype(np.float32), x0 - m, y0 - m, side + 2 * m)
    out = pp.crop_resize(crop, m, m, side, side, size, size) / np.float32(std)
    return out.transpose(2, 0, 1)[None].astype(np.float32)


def write_pad_manifest(pad_dir: Path, converted_dir: Path) -> dict:
    """models/pad.toml: every known PAD model, with the sha256 of its file."""
    models = {}
    for key, spec in PAD_MODELS.items():
        path = model_path(key, pad_dir, converted_dir)
        if not path.exists():
            raise SystemExit(f"{path}: missing (the PAD weights are read from ../shared/models/pad; "
                             "the 80 px conversions come from models/tools/minifasnet.py)")
        models[key] = {**spec, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    hashes = {k: v.pop("sha256") for k, v in models.items()}
    lines = ["# Known presentation-attack-detection models, written by models/tools/pad.py.",
             "# The weights are not in the repository: a configured model file is accepted when its",
             "# sha256 matches an entry here (README: installing your own PAD model).",
             "schema = 1", ""]
    for key, spec in models.items():
        lines.append(f"[models.{key}]")
        lines.append(f'sha256 = "{hashes[key]}"')
        lines += [f"{k} = {mf._value(v)}" for k, v in spec.items()]
        lines.append("")
    (MODELS / "pad.toml").write_text("\n".join(lines))
    return hashes


def write_golden(pad_dir: Path, converted_dir: Path) -> dict:
    import onnxruntime as ort

    img = media.read_rgb(REPO / "samples" / "astronaut.png")
    box = np.array(json.loads((GOLDEN / "golden.json").read_text())["detections"]["face_short"][0]["box"])
    golden = {"image": "samples/astronaut.png",
              "tolerance": {"input_abs": 1e-5, "logit_abs": 1e-3, "int8_logit_abs": 0.05}}
    # One set of cases per input size: the region each model's own crop scale gives for the
    # face, and one past the top-left corner (the mirrored padding).
    for size, group, regions in (
            (128, "cases", {"inside": ["minifasnetv2se_128", "minifasnetv2se_128_int8"], "edge": None}),
            (80, "cases_80", {"inside_v2": ["minifasnetv2_80"], "inside_v1se": ["minifasnetv1se_80"],
                              "edge_80": None})):
        keys = [k for ks in regions.values() if ks for k in ks]
        std = PAD_MODELS[keys[0]]["normalise"]["std"]
        sessions = {k: ort.InferenceSession(str(model_path(k, pad_dir, converted_dir))) for k in keys}
        cases = {}
        for name, own in regions.items():
            region = (-60, -45, 220) if own is None else pp.square_crop_region(box, PAD_MODELS[own[0]]["crop_scale"])
            x = pad_input(img, region, size, std)
            file = f"pad_{name}_input.npy"
            np.save(GOLDEN / file, x, allow_pickle=False)
            logits = {k: [round(float(v), 6) for v in s.run(None, {"input": x})[0][0]] for k, s in sessions.items()}
            cases[name] = {"region": [int(v) for v in region], "input": file, "logits": logits}
        golden[group] = {"size": size, "std": std, "cases": cases}
    (GOLDEN / "pad.json").write_text(json.dumps(golden, indent=1) + "\n")
    return golden


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pad-dir", type=Path, default=DEFAULT_PAD_DIR)
    ap.add_argument("--converted-dir", type=Path, default=TOOLS / ".cache" / "pad")
    args = ap.parse_args()
    print(write_pad_manifest(args.pad_dir, args.converted_dir))
    print(json.dumps(write_golden(args.pad_dir, args.converted_dir), indent=1))


if __name__ == "__main__":
    main()
