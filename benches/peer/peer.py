"""The peer a user would reach for: the SAME ONNX files under onnxruntime (one thread) with the
SAME preprocessing in numpy (models/tools/preprocess.py, the spec the golden tests hold the Rust
side to), over the SAME frames (ffmpeg to raw RGB, as veriface decodes). Per frame: detect, then
per face: deepfake crop + frame model, GRU step, emotion crop + model. Prints per-stage mean ms
(or JSON with --json) in the stage names of `veriface bench`.

    python benches/peer/peer.py [--clip samples/astronaut_zoom.avi] [--iterations 20] [--json]
"""
import argparse
import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "models" / "tools"))
import preprocess as pp  # noqa: E402


def decode(clip: Path) -> list[np.ndarray]:
    probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                            "stream=width,height", "-of", "csv=p=0", str(clip)],
                           check=True, capture_output=True, text=True).stdout.strip().split(",")
    w, h = int(probe[0]), int(probe[1])
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(clip), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         check=True, capture_output=True).stdout
    frames = np.frombuffer(raw, dtype=np.uint8).reshape(-1, h, w, 3)
    return [f for f in frames]


def session(manifest: dict, key: str) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    path = ROOT / "models" / manifest["models"][key]["file"]
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class Peer:
    def __init__(self, manifest: dict, detector: str, deepfake: str):
        self.det_spec = manifest["detector"][detector]
        self.size = self.det_spec["size"]
        self.anchors = pp.blazeface_anchors(self.size, self.det_spec["strides"], self.det_spec["anchors_per_layer"])
        self.det = session(manifest, detector)
        self.df_spec = manifest["models"][deepfake]
        self.df = session(manifest, deepfake)
        step_key = self.df_spec.get("temporal")
        self.step = session(manifest, step_key) if step_key else None
        self.h_shape = manifest["models"][step_key]["extra_inputs"][0]["shape"] if step_key else None
        self.em_spec = manifest["models"]["emotion"]
        self.em = session(manifest, "emotion")
        self.hidden = None

    def detect(self, img: np.ndarray) -> list[dict]:
        x, geom = pp.detector_input(img.astype(np.float32), self.size)
        reg, cls = self.det.run(None, {self.det.get_inputs()[0].name: x})[:2]
        faces = pp.decode_blazeface(reg, cls, self.anchors, self.size,
                                    self.det_spec["score_threshold"], self.det_spec["nms_iou"])
        return [pp.unletterbox(f, geom, self.size) for f in faces]

    def deepfake_crop(self, img, face):
        region = pp.square_crop_region(face["box"], self.df_spec["crop_scale"])
        return pp.backbone_input(img.astype(np.float32), region, self.df_spec["input"]["shape"][2])

    def deepfake(self, x):
        return self.df.run(None, {self.df.get_inputs()[0].name: x})

    def gru(self, features):
        if self.hidden is None:
            self.hidden = np.zeros(self.h_shape, dtype=np.float32)
        ins = self.step.get_inputs()
        outs = self.step.run(None, {ins[0].name: features.reshape(ins[0].shape).astype(np.float32),
                                    ins[1].name: self.hidden})
        self.hidden = outs[-1]
        return outs[0]

    def emotion_crop(self, img, face):
        region = pp.square_crop_region(face["box"], self.em_spec["crop_scale"])
        return pp.emotion_input(img, region, self.em_spec["input"]["shape"][2])

    def emotion(self, x):
        return self.em.run(None, {self.em.get_inputs()[0].name: x})[0]

    def process(self, img):
        for face in self.detect(img):
            features, _ = self.deepfake(self.deepfake_crop(img, face))[:2]
            if self.step is not None:
                self.gru(features)
            self.emotion(self.emotion_crop(img, face))


def timed(iterations: int, f) -> float:
    f()
    start = time.perf_counter()
    for _ in range(iterations):
        f()
    return (time.perf_counter() - start) / iterations * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clip", default=str(ROOT / "samples" / "astronaut_zoom.avi"))
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--passes", type=int, default=3, help="passes over the clip for the end-to-end figure")
    ap.add_argument("--detector", default="face_short")
    ap.add_argument("--deepfake-model", default="deepfake")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    manifest = tomllib.loads((ROOT / "models" / "manifest.toml").read_text())

    t = time.perf_counter()
    peer = Peer(manifest, args.detector, args.deepfake_model)
    load_ms = (time.perf_counter() - t) * 1e3
    t = time.perf_counter()
    frames = decode(Path(args.clip))
    decode_ms = (time.perf_counter() - t) * 1e3 / len(frames)
    img = frames[0]
    face = peer.detect(img)[0]
    crop = peer.deepfake_crop(img, face)
    features = peer.deepfake(crop)[0]
    em_crop = peer.emotion_crop(img, face)
    n = args.iterations
    stages = {
        "model load (all)": load_ms,
        "decode (per frame)": decode_ms,
        "detect: preprocess": timed(n, lambda: pp.detector_input(img.astype(np.float32), peer.size)),
        "detect: total": timed(n, lambda: peer.detect(img)),
        "deepfake crop+resize": timed(n, lambda: peer.deepfake_crop(img, face)),
        "deepfake frame model": timed(n, lambda: peer.deepfake(crop)),
        "temporal GRU step": timed(n, lambda: peer.gru(features)) if peer.step else None,
        "emotion crop+resize": timed(n, lambda: peer.emotion_crop(img, face)),
        "emotion model": timed(n, lambda: peer.emotion(em_crop)),
    }
    took = 0.0
    for _ in range(args.passes):  # each pass from a fresh state, like veriface bench --passes
        peer.hidden = None
        t = time.perf_counter()
        for f in frames:
            peer.process(f)
        took += time.perf_counter() - t
    e2e = took * 1e3 / (len(frames) * args.passes)
    stages["end to end per frame (no decode)"] = e2e
    stages = {k: v for k, v in stages.items() if v is not None}
    if args.json:
        print(json.dumps({"runtime": f"onnxruntime {ort.__version__}, numpy {np.__version__}, 1 thread",
                          "frames": len(frames), "fps": 1e3 / e2e,
                          "stages": [{"stage": k, "mean_ms": v} for k, v in stages.items()]}, indent=2))
    else:
        for k, v in stages.items():
            print(f"{k:36} {v:9.2f}")
        print(f"end to end: {1e3 / e2e:.1f} frames/s over {len(frames)} frames x {args.passes} passes (onnxruntime {ort.__version__}, 1 thread)")


if __name__ == "__main__":
    main()
