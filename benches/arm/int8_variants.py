#!/usr/bin/env python3
"""Experimental int8 forms of the EfficientNet-Lite0 backbone, for the int8-vs-f32 question.

Writes target/int8-variants/: each form's ONNX file and a manifest.toml that lists the bundled
models (by absolute path) plus these forms, so that

    veriface --models target/int8-variants/manifest.toml bench --model KEY
    MODELS="KEY ..." bash benches/arm/count.sh   (with VERIFACE_MODELS=target/int8-variants)

time them or count their instructions. Forms:
  backbone_int8_qop_pw  QOperator int8 for the 1x1 (pointwise) and full convolutions only; the
                        depthwise convolutions stay f32 (tract lowers an int8 depthwise conv
                        to im2col + a grouped matmul of one row, its slow path).

Calibration: face crops from real videos (models/tools/build.py's reader; default
../shared FaceForensics++ real videos, research-only: use --calib-dir on your own data).
Needs models/tools/requirements.txt's onnx and onnxruntime (no torch).
"""

import argparse
import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "models" / "tools"))
import build  # noqa: E402


def depthwise_convs(model) -> list[str]:
    names = []
    for node in model.graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type == "Conv" and group > 1:
            names.append(node.name)
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calib-dir", type=Path, default=build.DEFAULT_CALIB)
    ap.add_argument("--calib-count", type=int, default=64)
    args = ap.parse_args()
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    out = ROOT / "target" / "int8-variants"
    out.mkdir(parents=True, exist_ok=True)
    f32 = build.MODELS / "efficientnet_lite0_features.onnx"
    calib = build.calibration_crops(args.calib_dir, build.MODELS / "face_detection_short_range.onnx",
                                    args.calib_count, offset=0)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"input": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.items, None)

    # Names must exist for nodes_to_exclude: give unnamed nodes stable ones first.
    model = onnx.load(str(f32))
    for i, node in enumerate(model.graph.node):
        node.name = node.name or f"{node.op_type}_{i}"
    named = out / "backbone_named.onnx"
    onnx.save(model, str(named))
    pointwise = out / "efficientnet_lite0_features_int8_qop_pw.onnx"
    # Same settings as build.py's QOperator form, minus the depthwise convolutions.
    quantize_static(str(named), str(pointwise), Reader(), quant_format=QuantFormat.QOperator,
                    op_types_to_quantize=["Conv"], nodes_to_exclude=depthwise_convs(model),
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    reduce_range=True)
    ops = sorted({n.op_type for n in onnx.load(str(pointwise)).graph.node})
    print(f"{pointwise.name}: ops {ops}")
    # Agreement with f32 on held-out crops (onnxruntime): mean and worst feature cosine.
    import numpy as np
    import onnxruntime as ort

    held = build.calibration_crops(args.calib_dir, build.MODELS / "face_detection_short_range.onnx", 32, offset=1)
    ref, q = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (f32, pointwise))
    cos = []
    for x in held:
        a = ref.run(None, {"input": x[None]})[0].ravel()
        b = q.run(None, {"input": x[None]})[0].ravel()
        cos.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    print(f"feature cosine to f32 over {len(cos)} held-out crops: mean {np.mean(cos):.4f}, min {np.min(cos):.4f}")

    manifest = (build.MODELS / "manifest.toml").read_text()
    lines = []
    for line in manifest.splitlines():
        if line.startswith('file = "'):
            name = line.split('"')[1]
            line = f'file = "{build.MODELS / name}"'
        lines.append(line)
    digest = hashlib.sha256(pointwise.read_bytes()).hexdigest()
    lines += ["", "[models.backbone_int8_qop_pw]", f'sha256 = "{digest}"', f'file = "{pointwise.name}"',
              'task = "features"', 'variant_of = "backbone"',
              'description = "experimental: int8 QOperator pointwise convolutions, f32 depthwise"',
              'input = { name = "input", shape = [1, 3, 224, 224], layout = "NCHW", dtype = "f32", colour = "RGB" }',
              'normalise = { mean = 127.0, std = 128.0 }', "crop_scale = 1.3", 'outputs = ["features"]',
              'licence = "Apache-2.0"', 'source = "benches/arm/int8_variants.py from the bundled backbone"',
              'training_data = "ImageNet-1k (ILSVRC2012)"']
    (out / "manifest.toml").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'manifest.toml'}")


if __name__ == "__main__":
    main()
