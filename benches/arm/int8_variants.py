#!/usr/bin/env python3
"""Experimental int8 forms of the EfficientNet-Lite0 backbone, for the int8-vs-f32 question.

Writes target/int8-variants/: each form's ONNX file and a manifest.toml that lists the bundled
models (by absolute path) plus these forms, so that

    veriface --models target/int8-variants/manifest.toml bench --model KEY [--profile]
    MODELS="KEY ..." bash benches/arm/count.sh   (with VERIFACE_MODELS=target/int8-variants)
    python3 benches/arm/node_insns.py KEY ...    (instructions per node under qemu-aarch64)

time them or count their instructions. All are QOperator (QLinearConv: tract's integer path);
the forms differ in what the profile says decides whether tract's integer kernels can do the
requantisation themselves (see FORMS).

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


# key: (depthwise convs int8 too, activation type, symmetric activations, per-channel weight
#       scales, reduce_range, description). Weights are always symmetric int8.
FORMS = {
    # The earlier experiment: onnxruntime's defaults for x86 (u8 activations with a zero point,
    # per-channel weights, 7-bit range). tract requantises in separate passes (Scale, Add, Min,
    # Max, Cast per conv) and offsets u8 to i8 and sums the activations for the zero point.
    "backbone_int8_qop_pw": (False, "QUInt8", False, True, True,
                             "int8 QOperator pointwise convolutions (u8 activations, per-channel weights), f32 depthwise"),
    # Symmetric i8 activations (zero point 0) and one scale per tensor: the requantisation is a
    # scalar multiply, round, clamp and cast, each of which tract can fuse into its kernel.
    "backbone_int8_qop_pw_sym": (False, "QInt8", True, False, False,
                                 "int8 QOperator pointwise convolutions (symmetric i8 activations, per-tensor weights), f32 depthwise"),
    # The same with per-channel weight scales: isolates what per-channel scales cost.
    "backbone_int8_qop_pw_sym_pc": (False, "QInt8", True, True, False,
                                    "int8 QOperator pointwise convolutions (symmetric i8 activations, per-channel weights), f32 depthwise"),
    # Every convolution int8, depthwise included: what tract's integer depthwise path costs.
    "backbone_int8_qop_sym": (True, "QInt8", True, False, False,
                              "int8 QOperator every convolution (symmetric i8 activations, per-tensor weights)"),
}


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
    ap.add_argument("--only", nargs="*", choices=sorted(FORMS), help="write only these forms")
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
    import numpy as np
    import onnxruntime as ort

    held = build.calibration_crops(args.calib_dir, build.MODELS / "face_detection_short_range.onnx", 32, offset=1)
    ref = ort.InferenceSession(str(f32), providers=["CPUExecutionProvider"])
    written = []
    for key, (depthwise_too, activations, symmetric, per_channel, reduce_range, what) in FORMS.items():
        if args.only and key not in args.only:
            continue
        path = out / f"efficientnet_lite0_features_{key.removeprefix('backbone_')}.onnx"
        activations = getattr(QuantType, activations)
        quantize_static(str(named), str(path), Reader(), quant_format=QuantFormat.QOperator,
                        op_types_to_quantize=["Conv"],
                        nodes_to_exclude=[] if depthwise_too else depthwise_convs(model),
                        activation_type=activations, weight_type=QuantType.QInt8, per_channel=per_channel,
                        reduce_range=reduce_range,
                        extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True})
        ops = sorted({n.op_type for n in onnx.load(str(path)).graph.node})
        # Agreement with f32 on held-out crops (onnxruntime): mean and worst feature cosine.
        q = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        cos = []
        for x in held:
            a = ref.run(None, {"input": x[None]})[0].ravel()
            b = q.run(None, {"input": x[None]})[0].ravel()
            cos.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
        print(f"{key}: ops {ops}; feature cosine to f32 over {len(cos)} held-out crops: "
              f"mean {np.mean(cos):.4f}, min {np.min(cos):.4f}")
        written.append((key, path, what))

    manifest = (build.MODELS / "manifest.toml").read_text()
    lines = []
    for line in manifest.splitlines():
        if line.startswith('file = "'):
            name = line.split('"')[1]
            line = f'file = "{build.MODELS / name}"'
        lines.append(line)
    for key, path, what in written:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines += ["", f"[models.{key}]", f'sha256 = "{digest}"', f'file = "{path.name}"',
              'task = "features"', 'variant_of = "backbone"',
              f'description = "experimental: {what}"',
              'input = { name = "input", shape = [1, 3, 224, 224], layout = "NCHW", dtype = "f32", colour = "RGB" }',
              'normalise = { mean = 127.0, std = 128.0 }', "crop_scale = 1.3", 'outputs = ["features"]',
              'licence = "Apache-2.0"', 'source = "benches/arm/int8_variants.py from the bundled backbone"',
              'training_data = "ImageNet-1k (ILSVRC2012)"']
    (out / "manifest.toml").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'manifest.toml'}")


if __name__ == "__main__":
    main()
