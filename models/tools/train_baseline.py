#!/usr/bin/env python3
"""Baseline deepfake detector: a linear head and a small GRU on FROZEN EfficientNet-Lite0 features.

    python models/tools/train_baseline.py [--data ../shared/data/faceforensics] [--frames 12]

This is the evaluation baseline that lets the runtime give real, reproducible scores until the
full detector (fine-tuned backbone + Self-Blended Images, models/tools train issue) lands. It uses
the same detector, crop and resize as the runtime (preprocess.py), splits train / validation by
identity group so no person is in both, balances classes by weighting, and writes:

- models/deepfake_baseline.onnx: crop -> (features, fake_logit), the backbone with the head appended
- models/deepfake_gru_step.onnx: (features, h) -> (fake_logit, h'), one GRU step per frame
- models/baseline_report.json: validation frame / video AUC and accuracy

Data layout: a CSV with columns path,label[,identity_group] (label real|fake), paths relative to
the data folder, or `real/` and `fake/` folders of videos (each video its own group). Trained on
FaceForensics++ the models are research-only evaluation models (FF++ terms).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
MODELS = TOOLS.parent
CACHE = TOOLS / ".cache"
sys.path.insert(0, str(TOOLS))
import manifest as mf  # noqa: E402
import media  # noqa: E402
import preprocess as pp  # noqa: E402

HIDDEN = 32
SEED = 0


def list_videos(data: Path) -> list[dict]:
    csv_path = data / "videos.csv"
    items = []
    if csv_path.exists():
        with open(csv_path) as f:
            for row in csv.DictReader(f):
                items.append({"path": data / row["path"], "label": 1 if row["label"] == "fake" else 0,
                              "group": row.get("identity_group") or row["path"]})
    else:
        for label, sub in ((0, "real"), (1, "fake")):
            for p in sorted((data / sub).rglob("*")):
                if p.suffix.lower() in (".mp4", ".mov", ".mkv", ".avi", ".webm"):
                    items.append({"path": p, "label": label, "group": str(p)})
    if not items:
        raise SystemExit(f"{data}: no videos (expected videos.csv or real/ and fake/ folders)")
    return items


def extract(items: list[dict], frames: int, stride: int) -> list[dict]:
    """Per video: features of the main face in `frames` sampled frames (cached on disk)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    det = ort.InferenceSession(str(MODELS / mf.MODELS["face_short"]["file"]), opts)
    backbone = ort.InferenceSession(str(MODELS / mf.MODELS["backbone"]["file"]), opts)
    spec = mf.DETECTORS["face_short"]
    anchors = pp.blazeface_anchors(spec["size"], spec["strides"], spec["anchors_per_layer"])
    backbone_hash = hashlib.sha256((MODELS / mf.MODELS["backbone"]["file"]).read_bytes()).hexdigest()[:12]
    cache = CACHE / "features" / f"{backbone_hash}_f{frames}_s{stride}"
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for n, item in enumerate(items):
        key = hashlib.sha256(str(item["path"]).encode()).hexdigest()[:16]
        path = cache / f"{key}.npy"
        if path.exists():
            feats = np.load(path)
        else:
            feats = []
            for frame in media.sample_frames(item["path"], frames, stride=stride):
                tensor, geom = pp.detector_input(frame, spec["size"])
                reg, cls = det.run(None, {"input": tensor})
                faces = pp.decode_blazeface(reg, cls, anchors, spec["size"], spec["score_threshold"], spec["nms_iou"])
                if not faces:
                    continue
                face = pp.unletterbox(faces[0], geom, spec["size"])
                region = pp.square_crop_region(face["box"], mf.BACKBONE_CROP_SCALE)
                feats.append(backbone.run(None, {"input": pp.backbone_input(frame, region, 224)})[0][0])
            feats = np.array(feats, dtype=np.float32).reshape(-1, 1280)
            np.save(path, feats)
        print(f"  [{n + 1}/{len(items)}] {item['path'].name}: {len(feats)} faces", flush=True)
        if len(feats):
            out.append({**item, "features": feats})
    return out


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC with ties counted half (Mann-Whitney U)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=MODELS.parent.parent / "shared" / "data" / "faceforensics")
    ap.add_argument("--frames", type=int, default=12, help="frames sampled per video")
    ap.add_argument("--stride", type=int, default=15, help="frame step between samples")
    ap.add_argument("--val-fraction", type=float, default=0.25)
    args = ap.parse_args()

    import onnx
    import torch
    from onnx import helper, numpy_helper

    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    print(f"extracting face features from {args.data}")
    videos = extract(list_videos(args.data), args.frames, args.stride)
    groups = sorted({v["group"] for v in videos})
    rng.shuffle(groups)
    val_groups = set(groups[: max(1, int(len(groups) * args.val_fraction))])
    train = [v for v in videos if v["group"] not in val_groups]
    val = [v for v in videos if v["group"] in val_groups]
    print(f"train {len(train)} videos, validation {len(val)} videos ({len(val_groups)} of {len(groups)} identity groups)")

    # Standardise with training statistics, folded into the exported head.
    xs = np.concatenate([v["features"] for v in train])
    mean, std = xs.mean(0), xs.std(0) + 1e-6

    def tensor(v):
        return torch.from_numpy((v["features"] - mean) / std)

    # Frame head: weighted logistic regression (balances the 1.5:1 fake:real frames).
    ys = np.concatenate([np.full(len(v["features"]), v["label"], np.float32) for v in train])
    pos_weight = torch.tensor((ys == 0).sum() / max(1, (ys == 1).sum()))
    head = torch.nn.Linear(1280, 1)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-2)
    x_t = torch.from_numpy((xs - mean) / std)
    y_t = torch.from_numpy(ys)
    for _ in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(x_t)[:, 0], y_t, pos_weight=pos_weight)
        loss.backward()
        opt.step()

    # Temporal model: GRU over per-frame standardised features, logit from the last hidden state.
    class Temporal(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(1280, HIDDEN)
            self.out = torch.nn.Linear(HIDDEN, 1)

        def forward(self, x, h):
            y, h = self.gru(x, h)
            return self.out(h[0]), h

    temporal = Temporal()
    opt = torch.optim.AdamW(temporal.parameters(), lr=1e-3, weight_decay=1e-2)
    real_w = sum(v["label"] for v in train) / max(1, sum(1 - v["label"] for v in train))
    for epoch in range(40):
        order = rng.permutation(len(train))
        for i in order:
            v = train[i]
            seq = tensor(v)
            # Random-length prefixes teach the model to answer after any number of frames.
            n = int(rng.integers(1, len(seq) + 1))
            logit, _ = temporal(seq[:n, None, :], torch.zeros(1, 1, HIDDEN))
            w = torch.tensor(real_w if v["label"] == 0 else 1.0)
            loss = w * torch.nn.functional.binary_cross_entropy_with_logits(logit[0, 0], torch.tensor(float(v["label"])))
            opt.zero_grad()
            loss.backward()
            opt.step()

    # Validation.
    with torch.no_grad():
        frame_scores, frame_labels, video_gru, video_mean, video_labels = [], [], [], [], []
        for v in val:
            s = torch.sigmoid(head(tensor(v))[:, 0]).numpy()
            frame_scores += list(s)
            frame_labels += [v["label"]] * len(s)
            logit, _ = temporal(tensor(v)[:, None, :], torch.zeros(1, 1, HIDDEN))
            video_gru.append(float(torch.sigmoid(logit)[0, 0]))
            video_mean.append(float(s.mean()))
            video_labels.append(v["label"])
    fl, fs = np.array(frame_labels), np.array(frame_scores)
    vl = np.array(video_labels)
    report = {
        "data": str(args.data.name), "train_videos": len(train), "val_videos": len(val),
        "val_identity_groups": len(val_groups), "frames_per_video": args.frames,
        "frame_auc": round(auc(fl, fs), 4), "frame_accuracy_at_0.5": round(float(((fs >= 0.5) == fl).mean()), 4),
        "video_auc_gru": round(auc(vl, np.array(video_gru)), 4),
        "video_auc_frame_mean": round(auc(vl, np.array(video_mean)), 4),
        "video_accuracy_gru_at_0.5": round(float(((np.array(video_gru) >= 0.5) == vl).mean()), 4),
    }
    print(json.dumps(report, indent=1))
    (MODELS / "baseline_report.json").write_text(json.dumps(report, indent=1) + "\n")

    # Export the frame model: backbone graph + standardisation folded into one Gemm.
    w = head.weight.detach().numpy()[0] / std
    b = float(head.bias.detach().numpy()[0] - (head.weight.detach().numpy()[0] * mean / std).sum())
    model = onnx.load(str(MODELS / mf.MODELS["backbone"]["file"]))
    g = model.graph
    g.initializer.extend([numpy_helper.from_array(w[None].astype(np.float32), "fake_head_W"),
                          numpy_helper.from_array(np.array([b], np.float32), "fake_head_B")])
    g.node.append(helper.make_node("Gemm", ["features", "fake_head_W", "fake_head_B"], ["fake_logit"], transB=1,
                                   name="fake_head"))
    g.output.append(helper.make_tensor_value_info("fake_logit", onnx.TensorProto.FLOAT, [1, 1]))
    onnx.checker.check_model(model)
    onnx.save(model, str(MODELS / "deepfake_baseline.onnx"))

    # Export one GRU step with the standardisation folded into a leading affine op.
    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.t = temporal
            self.register_buffer("mean", torch.from_numpy(mean))
            self.register_buffer("inv_std", torch.from_numpy(1.0 / std))

        def forward(self, x, h):
            return self.t((x - self.mean) * self.inv_std, h)

    step = Step().eval()
    with torch.no_grad():
        torch.onnx.export(step, (torch.zeros(1, 1, 1280), torch.zeros(1, 1, HIDDEN)), str(MODELS / "deepfake_gru_step.onnx"),
                          input_names=["features", "initial_h"], output_names=["fake_logit", "Y_h"], opset_version=13,
                          dynamo=False)
    print("wrote deepfake_baseline.onnx, deepfake_gru_step.onnx; now run build.py --skip-int8 --keep-int8 to refresh manifest/golden")


if __name__ == "__main__":
    main()
