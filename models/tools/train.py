#!/usr/bin/env python3
"""Train the deepfake detector: fine-tuned EfficientNet-Lite0 frame model, GRU over frames, int8.

    python models/tools/train.py                       # FF++ in ../shared, last blocks tuned
    python models/tools/train.py --data DIR --tune all # your own data, whole backbone

DIR holds `videos.csv` (columns path,label[,identity_group]; label real|fake) or `real/` and
`fake/` folders of videos (each video its own identity group). Steps, each cached under
models/tools/.cache/train/ so an interrupted run resumes where it stopped:

1. faces: clips of frames from every video; the main face found by the SAME detector, crop
   scale and resize as the runtime (preprocess.py, covered by the golden tests); FaceMesh
   landmarks for real faces.
2. sbi: Self-Blended pseudo-fake clips from every real clip (sbi.py), parameters held or drifting.
3. frame model: EfficientNet-Lite0 -> fake logit on real, fake and SBI faces (class-balanced).
   --tune head | last (blocks 11-15 and the head conv) | all. Checkpoint every epoch.
4. temporal model: a GRU (hidden 32) over per-frame features of real, fake and SBI clips.
5. export: frame model (crop -> features, fake_logit), GRU sequence and single-step models,
   int8 QDQ frame model calibrated on real training crops; metrics into deepfake_report.json;
   then build.py refreshes the manifest and the golden references.

Train/validation split is by identity group: no person is in both. Trained on FaceForensics++
the models are research-only evaluation models (FF++ terms).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
MODELS = TOOLS.parent
CACHE = TOOLS / ".cache" / "train"
sys.path.insert(0, str(TOOLS))
import manifest as mf  # noqa: E402
import media  # noqa: E402
import preprocess as pp  # noqa: E402
import sbi  # noqa: E402

SEED = 0
HIDDEN = 32
CROP = 224
MESH = 192
# Blocks before this index stay frozen with --tune last (output 112 x 14 x 14).
FIRST_TUNED_BLOCK = 11
DETECTOR = "face_full"  # FF++ faces are small in 720p frames: the short-range model misses them.
# int8: calibration crops and method, and the fake head (pooling + Gemm) kept in float. Chosen
# with --compare-quantization on the validation split (see models/README.md).
CALIB_CROPS = 256
CALIBRATION = "minmax"
FLOAT_HEAD = True
OUT = {"frame": "deepfake_effnet_lite0.onnx", "int8": "deepfake_effnet_lite0_int8_qdq.onnx",
       "step": "deepfake_gru_step.onnx", "sequence": "deepfake_gru_sequence.onnx"}


def list_videos(data: Path) -> list[dict]:
    csv_path = data / "videos.csv"
    items = []
    if csv_path.exists():
        with open(csv_path) as f:
            for row in csv.DictReader(f):
                items.append({"path": str(data / row["path"]), "name": row["path"],
                              "label": 1 if row["label"] == "fake" else 0,
                              "group": row.get("identity_group") or row["path"]})
    else:
        for label, sub in ((0, "real"), (1, "fake")):
            for p in sorted((data / sub).rglob("*")):
                if p.suffix.lower() in (".mp4", ".mov", ".mkv", ".avi", ".webm"):
                    name = str(p.relative_to(data))
                    items.append({"path": str(p), "name": name, "label": label, "group": name})
    if not items:
        raise SystemExit(f"{data}: no videos (expected videos.csv or real/ and fake/ folders)")
    return items


def key_of(item: dict) -> str:
    """Cache key: the path inside the data folder and the file size (stable across machines)."""
    return hashlib.sha256(f"{item['name']}:{Path(item['path']).stat().st_size}".encode()).hexdigest()[:16]


# ---------------------------------------------------------------- 1. faces

_sessions: dict = {}


def _session(name: str):
    import onnxruntime as ort

    if name not in _sessions:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        _sessions[name] = ort.InferenceSession(str(MODELS / mf.MODELS[name]["file"]), opts)
    return _sessions[name]


def landmarks_in_crop(frame: np.ndarray, box: np.ndarray, crop_region: tuple[int, int, int]) -> np.ndarray:
    """468 FaceMesh (x, y) points mapped into the backbone crop's pixel coordinates."""
    x0, y0, side = pp.square_crop_region(box, mf.MODELS["face_mesh"]["crop_scale"])
    mesh_in = (pp.crop_resize(frame, x0, y0, side, side, MESH, MESH) / np.float32(255.0)).transpose(2, 0, 1)[None]
    pts = _session("face_mesh").run(None, {"input_1": mesh_in.astype(np.float32)})[0].reshape(468, 3)[:, :2]
    cx0, cy0, cside = crop_region
    frame_pts = np.stack([x0 + pts[:, 0] * side / MESH, y0 + pts[:, 1] * side / MESH], axis=1)
    return ((frame_pts - np.array([cx0, cy0])) * CROP / cside).astype(np.float32)


def extract_video(job: tuple[dict, list[int], int, int, str]) -> str:
    item, starts, frames, stride, dest = job
    out = Path(dest)
    if out.exists():
        return out.name
    spec = mf.DETECTORS[DETECTOR]
    anchors = pp.blazeface_anchors(spec["size"], spec["strides"], spec["anchors_per_layer"])
    crops, marks, clips = [], [], []
    for clip, start in enumerate(starts):
        prev = None
        for frame in media.sample_frames(Path(item["path"]), frames, stride=stride, start=start):
            tensor, geom = pp.detector_input(frame, spec["size"])
            reg, cls = _session(DETECTOR).run(None, {"input": tensor})
            faces = [pp.unletterbox(f, geom, spec["size"]) for f in
                     pp.decode_blazeface(reg, cls, anchors, spec["size"], spec["score_threshold"], spec["nms_iou"])]
            if not faces:
                continue
            # The main face: the one that overlaps the previous frame's most (the runtime tracks too).
            face = max(faces, key=lambda f: pp.iou(f["box"], prev)) if prev is not None else faces[0]
            prev = face["box"]
            region = pp.square_crop_region(face["box"], mf.BACKBONE_CROP_SCALE)
            x0, y0, side = region
            crop = pp.crop_resize(frame, x0, y0, side, side, CROP, CROP)
            crops.append(np.clip(crop + 0.5, 0, 255).astype(np.uint8))
            marks.append(landmarks_in_crop(frame, face["box"], region) if item["label"] == 0 else
                         np.zeros((468, 2), np.float32))
            clips.append(clip)
    np.savez(out.with_suffix(".tmp.npz"), crops=np.array(crops, np.uint8).reshape(-1, CROP, CROP, 3),
             landmarks=np.array(marks, np.float32).reshape(-1, 468, 2), clip=np.array(clips, np.int64))
    out.with_suffix(".tmp.npz").rename(out)
    return out.name


def extract_all(items: list[dict], args, workers: int) -> None:
    dest = CACHE / f"faces_{DETECTOR}_f{args.frames}_s{args.stride}"
    dest.mkdir(parents=True, exist_ok=True)
    jobs = []
    for item in items:
        starts = [0, args.second_clip_start] if item["label"] == 0 else [0]
        item["faces"] = str(dest / f"{key_of(item)}.npz")
        jobs.append((item, starts, args.frames, args.stride, item["faces"]))
    todo = [j for j in jobs if not Path(j[4]).exists()]
    print(f"faces: {len(jobs) - len(todo)} cached, {len(todo)} to extract with {workers} workers", flush=True)
    with Pool(workers) as pool:
        for n, name in enumerate(pool.imap_unordered(extract_video, todo)):
            print(f"  [{n + 1}/{len(todo)}] {name}", flush=True)


# ---------------------------------------------------------------- 2. SBI clips

def sbi_job(job: tuple[str, str, int, int]) -> str:
    src, dest, variant, seed = job
    out = Path(dest)
    if out.exists():
        return out.name
    d = np.load(src)
    rng = np.random.default_rng(seed)
    crops, clips = [], []
    for clip in np.unique(d["clip"]):
        idx = np.nonzero(d["clip"] == clip)[0]
        if len(idx) == 0:
            continue
        crops.append(sbi.self_blend_clip(d["crops"][idx], d["landmarks"][idx], rng, drift=bool(variant % 2)))
        clips.append(np.full(len(idx), clip))
    np.savez(out.with_suffix(".tmp.npz"), crops=np.concatenate(crops) if crops else np.zeros((0, CROP, CROP, 3), np.uint8),
             clip=np.concatenate(clips) if clips else np.zeros(0, np.int64))
    out.with_suffix(".tmp.npz").rename(out)
    return out.name


def sbi_all(items: list[dict], variants: int, workers: int) -> None:
    jobs = []
    for item in items:
        item["sbi"] = []
        if item["label"] != 0:
            continue
        for v in range(variants):
            dest = item["faces"].replace(".npz", f"_sbi{v}.npz")
            item["sbi"].append(dest)
            seed = int(key_of(item)[:8], 16) + v
            jobs.append((item["faces"], dest, v, seed))
    todo = [j for j in jobs if not Path(j[1]).exists()]
    print(f"sbi: {len(jobs) - len(todo)} cached, {len(todo)} to blend", flush=True)
    with Pool(workers) as pool:
        for n, name in enumerate(pool.imap_unordered(sbi_job, todo)):
            print(f"  [{n + 1}/{len(todo)}] {name}", flush=True)


# ---------------------------------------------------------------- data

def load_clips(items: list[dict]) -> list[dict]:
    """Every clip as {crops, label, kind (real|fake|sbi), group, video}."""
    clips = []
    for item in items:
        sources = [(item["faces"], "fake" if item["label"] else "real")] + [(p, "sbi") for p in item["sbi"]]
        for path, kind in sources:
            d = np.load(path)
            for c in np.unique(d["clip"]):
                idx = np.nonzero(d["clip"] == c)[0]
                clips.append({"crops": d["crops"][idx], "label": 0 if kind == "real" else 1, "kind": kind,
                              "group": item["group"], "video": item["path"]})
    return clips


def normalise(crops: np.ndarray):
    import torch

    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float()
    return (x - 127.0) / 128.0


# ---------------------------------------------------------------- 3. frame model

def build_frame_model(tune: str):
    import torch
    import export_backbone

    net = export_backbone.load()

    class Trunk(torch.nn.Module):
        """Frozen part: stem and blocks before the first tuned one."""

        def __init__(self, first: int):
            super().__init__()
            self.net, self.first = net, first

        def forward(self, x):
            x = self.net._swish(self.net._bn0(self.net._conv_stem(x)))
            for block in self.net._blocks[: self.first]:
                x = block(x)
            return x

    class Top(torch.nn.Module):
        """Tuned part: remaining blocks, head conv, pooled features and the fake logit."""

        def __init__(self, first: int):
            super().__init__()
            self.net, self.first = net, first
            self.fake = torch.nn.Linear(1280, 1)
            self.dropout = torch.nn.Dropout(0.2)

        def features(self, x):
            for block in self.net._blocks[self.first:]:
                x = block(x)
            return self.net._swish(self.net._bn1(self.net._conv_head(x))).mean(dim=(2, 3))

        def forward(self, x):
            f = self.features(x)
            return f, self.fake(self.dropout(f))[:, 0]

    first = {"head": len(net._blocks), "last": FIRST_TUNED_BLOCK, "all": 0}[tune]
    trunk, top = Trunk(first), Top(first)
    for p in net.parameters():
        p.requires_grad = False
    if tune == "head":
        tuned = []
    elif tune == "all":
        tuned = list(net._conv_stem.parameters()) + list(net._bn0.parameters()) + list(net._blocks.parameters())
    else:
        tuned = list(net._blocks[first:].parameters())
    if tune != "head":
        tuned += list(net._conv_head.parameters()) + list(net._bn1.parameters())
    for p in tuned:
        p.requires_grad = True
    return net, trunk, top, tuned


class Full:
    """crop -> (features, fake_logit): the exported frame model."""

    @staticmethod
    def make(trunk, top):
        import torch

        class Model(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.trunk, self.top = trunk, top

            def forward(self, x):
                f = self.top.features(self.trunk(x))
                return f, self.top.fake(f)

        return Model().eval()


def batched(fn, arrays: np.ndarray, batch: int = 32):
    import torch

    outs = []
    with torch.no_grad():
        for i in range(0, len(arrays), batch):
            outs.append(fn(arrays[i:i + batch]))
    return outs


def train_frame_model(train: list[dict], args, device) -> tuple:
    import torch

    torch.manual_seed(SEED)
    net, trunk, top, tuned = build_frame_model(args.tune)
    net.eval()  # BatchNorm statistics stay ImageNet's: batches are small and the data few.
    trunk.to(device)
    top.to(device)
    crops = np.concatenate([c["crops"] for c in train])
    labels = np.concatenate([np.full(len(c["crops"]), c["label"], np.float32) for c in train])
    kinds = np.concatenate([[c["kind"]] * len(c["crops"]) for c in train])
    # Balance: real frames weigh as much as all fakes; real fakes as much as SBI fakes.
    weights = np.ones(len(labels), np.float32)
    for kind, share in (("real", 0.5), ("fake", 0.25), ("sbi", 0.25)):
        n = (kinds == kind).sum()
        if n:
            weights[kinds == kind] = share * len(labels) / n
    if (kinds == "fake").sum() == 0 or (kinds == "sbi").sum() == 0:
        weights[labels == 1] = 0.5 * len(labels) / max(1, (labels == 1).sum())

    frozen = args.tune != "all"
    if frozen:
        t0 = time.time()
        cache_in = batched(lambda b: trunk(normalise(b).to(device)).half().cpu(), crops)
        inputs = torch.cat(cache_in)
        print(f"frame model: frozen trunk run on {len(crops)} crops in {time.time() - t0:.0f} s", flush=True)
    ckpt = CACHE / f"frame_{args.tune}.pt"
    opt = torch.optim.AdamW([{"params": tuned, "lr": args.lr}, {"params": top.fake.parameters(), "lr": 1e-3}],
                            weight_decay=1e-4)
    start = 0
    if ckpt.exists() and not args.restart:
        state = torch.load(ckpt, weights_only=False)
        net.load_state_dict(state["net"])
        top.fake.load_state_dict(state["fake"])
        opt.load_state_dict(state["opt"])
        start = state["epoch"]
        print(f"frame model: resumed after epoch {start}", flush=True)
    rng = np.random.default_rng(SEED)
    for _ in range(start):
        rng.permutation(len(labels))
    for epoch in range(start, args.epochs):
        t0 = time.time()
        order = rng.permutation(len(labels))
        total = 0.0
        top.train()
        top.net.eval()
        for i in range(0, len(order), args.batch):
            idx = order[i:i + args.batch]
            if frozen:
                x = inputs[idx].float().to(device)
            else:
                batch = crops[idx]
                flip = rng.random(len(idx)) < 0.5
                batch = np.where(flip[:, None, None, None], batch[:, :, ::-1], batch)
                x = trunk(normalise(np.ascontiguousarray(batch)).to(device))
            _, logit = top(x)
            y = torch.from_numpy(labels[idx]).to(device)
            w = torch.from_numpy(weights[idx]).to(device)
            loss = (torch.nn.functional.binary_cross_entropy_with_logits(logit, y, reduction="none") * w).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
        top.eval()
        torch.save({"net": net.state_dict(), "fake": top.fake.state_dict(), "opt": opt.state_dict(), "epoch": epoch + 1},
                   ckpt)
        print(f"  epoch {epoch + 1}/{args.epochs}: loss {total / len(labels):.4f} ({time.time() - t0:.0f} s)", flush=True)
    top.eval()
    return Full.make(trunk, top).cpu()


def frame_outputs(model, clips: list[dict]) -> None:
    """Adds per-frame features and fake probabilities to each clip."""
    for c in clips:
        outs = batched(lambda b: [t.numpy() for t in model(normalise(b))], c["crops"])
        c["features"] = np.concatenate([o[0] for o in outs]).astype(np.float32)
        c["prob"] = 1 / (1 + np.exp(-np.concatenate([o[1][:, 0] for o in outs])))


# ---------------------------------------------------------------- 4. temporal model

def train_temporal(train: list[dict], epochs: int):
    import torch

    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    xs = np.concatenate([c["features"] for c in train])
    mean, std = xs.mean(0), xs.std(0) + 1e-6

    class Temporal(torch.nn.Module):
        """GRU over standardised frame features; a fake logit after every frame."""

        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.from_numpy(mean))
            self.register_buffer("inv_std", torch.from_numpy(1.0 / std))
            self.gru = torch.nn.GRU(1280, HIDDEN)
            self.out = torch.nn.Linear(HIDDEN, 1)
            self.drop = torch.nn.Dropout(0.3)

        def forward(self, x, h):
            y, h = self.gru(self.drop((x - self.mean) * self.inv_std), h)
            return self.out(y), h

    model = Temporal()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    kinds = [c["kind"] for c in train]
    share = {"real": 0.5, "fake": 0.25, "sbi": 0.25}
    weight = {k: share[k] * len(train) / max(1, kinds.count(k)) for k in share}
    for _ in range(epochs):
        model.train()
        for i in rng.permutation(len(train)):
            c = train[i]
            x = torch.from_numpy(c["features"])[:, None, :]
            logits, _ = model(x, torch.zeros(1, 1, HIDDEN))
            # Every prefix is a question the daemon asks: score each step, later steps a bit more.
            steps = torch.linspace(0.5, 1.0, len(c["features"]))
            y = torch.full((len(c["features"]),), float(c["label"]))
            loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0, 0], y, reduction="none")
                    * steps).mean() * weight[c["kind"]]
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


# ---------------------------------------------------------------- metrics

def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC with ties counted half (Mann-Whitney U)."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def metrics(clips: list[dict], key: str, video_scores: dict[str, float] | None, threshold: float,
            frames_only: bool = False) -> dict:
    fl = np.concatenate([np.full(len(c[key]), c["label"]) for c in clips])
    fs = np.concatenate([c[key] for c in clips])
    by_video: dict = {}
    for c in clips:
        by_video.setdefault(c["video"], (c["label"], []))[1].append(c[key])
    vl = np.array([v[0] for v in by_video.values()])
    vmean = np.array([np.concatenate(v[1]).mean() for v in by_video.values()])
    out = {"frames": int(len(fl)), "frame_auc": round(auc(fl, fs), 4),
           "frame_accuracy": round(float(((fs >= threshold) == fl).mean()), 4)}
    if frames_only:
        # SBI clips share their source video's name, so per-video scores would mix labels.
        return out
    out |= {"videos": int(len(vl)), "video_auc_frame_mean": round(auc(vl, vmean), 4),
            "video_accuracy_frame_mean": round(float(((vmean >= threshold) == vl).mean()), 4)}
    if video_scores is not None:
        vg = np.array([video_scores[v] for v in by_video])
        out["video_auc_gru"] = round(auc(vl, vg), 4)
        out["video_accuracy_gru"] = round(float(((vg >= threshold) == vl).mean()), 4)
    return out


# ---------------------------------------------------------------- 5. export

def export(frame_model, temporal, calib: np.ndarray) -> None:
    import onnx
    import torch
    dummy = torch.zeros(1, 3, CROP, CROP)
    with torch.no_grad():
        torch.onnx.export(frame_model, dummy, str(MODELS / OUT["frame"]), input_names=["input"],
                          output_names=["features", "fake_logit"], opset_version=13, do_constant_folding=True,
                          dynamo=False)
        torch.onnx.export(temporal, (torch.zeros(1, 1, 1280), torch.zeros(1, 1, HIDDEN)), str(MODELS / OUT["step"]),
                          input_names=["features", "initial_h"], output_names=["fake_logit", "Y_h"], opset_version=13,
                          dynamo=False)
        torch.onnx.export(temporal, (torch.zeros(8, 1, 1280), torch.zeros(1, 1, HIDDEN)), str(MODELS / OUT["sequence"]),
                          input_names=["features", "initial_h"], output_names=["fake_logit", "Y_h"], opset_version=13,
                          dynamic_axes={"features": {0: "frames"}, "fake_logit": {0: "frames"}}, dynamo=False)

    quantize(calib, CALIBRATION, float_head=FLOAT_HEAD)
    for name in OUT.values():
        onnx.checker.check_model(str(MODELS / name))


def quantize(calib: np.ndarray, method: str, out: Path | None = None, reduce_range: bool = True,
             float_head: bool = False) -> None:
    """int8 QDQ frame model from the exported f32 one, calibrated on real face crops.
    float_head: leave the fake head (Gemm/MatMul) and the pooling before it in float."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"input": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.items, None)

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    # U8 activations, S8 per-channel weights; reduce_range keeps weights to 7 bits so the
    # u8 x s8 products cannot saturate on CPUs without VNNI (the boards' NEON included).
    exclude = []
    if float_head:
        graph = onnx.load(str(MODELS / OUT["frame"])).graph
        exclude = [n.name for n in graph.node if n.op_type in ("Gemm", "MatMul", "ReduceMean", "GlobalAveragePool")]
    quantize_static(str(MODELS / OUT["frame"]), str(out or MODELS / OUT["int8"]), Reader(),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=True, reduce_range=reduce_range, calibrate_method=methods[method],
                    nodes_to_exclude=exclude, extra_options={"CalibPercentile": 99.99})


def calibration_crops(train: list[dict], count: int) -> np.ndarray:
    """Real training faces, spread over videos (every 4th frame of each clip)."""
    real = np.concatenate([c["crops"][::4] for c in train if c["kind"] == "real"])
    pick = np.random.default_rng(SEED).permutation(len(real))[:count]
    return normalise(real[np.sort(pick)]).numpy()


def compare_quantization(train: list[dict], val_ff: list[dict], threshold: float) -> dict:
    """Re-quantize the exported f32 model with several calibrations; validation AUC of each."""
    onnx_probs(MODELS / OUT["frame"], val_ff, "prob_f32")
    results = {"f32": metrics(val_ff, "prob_f32", None, threshold, frames_only=True)}
    for count, method, reduce_range, float_head in (
            (64, "minmax", True, False), (256, "minmax", True, False), (256, "percentile", True, False),
            (256, "entropy", True, False), (256, "minmax", False, False), (256, "minmax", True, True),
            (256, "minmax", False, True)):
        name = f"{count}_{method}" + ("" if reduce_range else "_fullrange") + ("_floathead" if float_head else "")
        path = CACHE / f"int8_{name}.onnx"
        t0 = time.time()
        quantize(calibration_crops(train, count), method, path, reduce_range, float_head)
        onnx_probs(path, val_ff, "prob_int8")
        results[name] = metrics(val_ff, "prob_int8", None, threshold, frames_only=True)
        print(f"{name}: {results[name]} ({time.time() - t0:.0f} s)", flush=True)
    return results


def onnx_probs(path: Path, clips: list[dict], key: str) -> None:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), opts)
    for c in clips:
        x = normalise(c["crops"]).numpy()
        logits = np.array([sess.run(None, {"input": x[i:i + 1]})[1][0, 0] for i in range(len(x))])
        c[key] = 1 / (1 + np.exp(-logits))


def gru_scores(path: Path, clips: list[dict]) -> dict[str, float]:
    """Video score = the sequence model's output after the video's last frame (clips chained)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path))
    out = {}
    for c in clips:
        logits, _ = sess.run(None, {"features": c["features"][:, None, :], "initial_h": np.zeros((1, 1, HIDDEN), np.float32)})
        out.setdefault(c["video"], []).append(float(1 / (1 + np.exp(-logits[-1, 0, 0]))))
    return {v: float(np.mean(s)) for v, s in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=MODELS.parent.parent / "shared" / "data" / "faceforensics")
    ap.add_argument("--tune", choices=("head", "last", "all"), default="last", help="which backbone layers train")
    ap.add_argument("--frames", type=int, default=16, help="frames per clip")
    ap.add_argument("--stride", type=int, default=4, help="frame step inside a clip")
    ap.add_argument("--second-clip-start", type=int, default=150, help="first frame of a real video's second clip")
    ap.add_argument("--sbi-variants", type=int, default=2, help="pseudo-fake clips per real clip")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--gru-epochs", type=int, default=15)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-4, help="learning rate of the tuned backbone layers")
    ap.add_argument("--val-fraction", type=float, default=0.25)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--restart", action="store_true", help="ignore the frame model checkpoint")
    ap.add_argument("--no-export", action="store_true", help="train and report only (for --tune comparisons)")
    ap.add_argument("--quantize-only", action="store_true",
                    help="only re-quantize the exported f32 frame model, re-measure int8, refresh manifest")
    ap.add_argument("--compare-quantization", action="store_true",
                    help="only re-quantize the exported f32 model with several calibrations and report each")
    args = ap.parse_args()

    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(args.workers)
    started = time.time()
    items = list_videos(args.data)
    extract_all(items, args, args.workers)
    sbi_all(items, args.sbi_variants, args.workers)
    t_data = time.time() - started

    rng = np.random.default_rng(SEED)
    groups = sorted({i["group"] for i in items})
    rng.shuffle(groups)
    val_groups = set(groups[: max(1, int(len(groups) * args.val_fraction))])
    train = load_clips([i for i in items if i["group"] not in val_groups])
    val = load_clips([i for i in items if i["group"] in val_groups])
    count = lambda cs, k: sum(len(c["crops"]) for c in cs if c["kind"] == k)  # noqa: E731
    print(f"train: {count(train, 'real')} real, {count(train, 'fake')} fake, {count(train, 'sbi')} SBI frames; "
          f"validation: {count(val, 'real')} real, {count(val, 'fake')} fake ({len(val_groups)} of {len(groups)} groups)",
          flush=True)

    if args.compare_quantization:
        results = compare_quantization(train, [c for c in val if c["kind"] != "sbi"], 0.5)
        print(json.dumps(results, indent=1))
        (CACHE / "quantization.json").write_text(json.dumps(results, indent=1) + "\n")
        return

    if args.quantize_only:
        val_ff = [c for c in val if c["kind"] != "sbi"]
        quantize(calibration_crops(train, CALIB_CROPS), CALIBRATION, float_head=FLOAT_HEAD)
        onnx_probs(MODELS / OUT["int8"], val_ff, "prob_int8")
        path = MODELS / "deepfake_report.json"
        report = json.loads(path.read_text())
        report["val_int8"] = metrics(val_ff, "prob_int8", None, report["threshold"])
        report["int8_calibration"] = {"crops": CALIB_CROPS, "method": CALIBRATION, "float_head": FLOAT_HEAD}
        print(json.dumps(report["val_int8"], indent=1))
        path.write_text(json.dumps(report, indent=1) + "\n")
        subprocess.run([sys.executable, str(TOOLS / "build.py"), "--skip-int8"], check=True)
        return

    t0 = time.time()
    frame_model = train_frame_model(train, args, device)
    t_frame = time.time() - t0
    t0 = time.time()
    frame_outputs(frame_model, train + val)
    temporal = train_temporal(train, args.gru_epochs)
    t_gru = time.time() - t0
    val_ff = [c for c in val if c["kind"] != "sbi"]
    val_sbi = [c for c in val if c["kind"] != "fake"]
    threshold = 0.5
    report = {"device": str(device), "tune": args.tune, "detector": DETECTOR, "data": args.data.name,
              "train_videos": len({c["video"] for c in train}), "val_videos": len({c["video"] for c in val_ff}),
              "val_identity_groups": len(val_groups), "threshold": threshold,
              "train_frames": {k: count(train, k) for k in ("real", "fake", "sbi")},
              "minutes": {"faces_and_sbi": round(t_data / 60, 1), "frame_model": round(t_frame / 60, 1),
                          "temporal": round(t_gru / 60, 1)}}
    if args.no_export:
        report["val_torch"] = metrics(val_ff, "prob", None, threshold)
        print(json.dumps(report, indent=1))
        (CACHE / f"report_{args.tune}.json").write_text(json.dumps(report, indent=1) + "\n")
        return

    export(frame_model, temporal, calibration_crops(train, CALIB_CROPS))
    onnx_probs(MODELS / OUT["frame"], val, "prob_f32")
    onnx_probs(MODELS / OUT["int8"], val_ff, "prob_int8")
    video_gru = gru_scores(MODELS / OUT["sequence"], val)
    report["val_f32"] = metrics(val_ff, "prob_f32", video_gru, threshold)
    report["val_int8"] = metrics(val_ff, "prob_int8", None, threshold)
    report["val_real_vs_sbi_f32"] = metrics(val_sbi, "prob_f32", None, threshold, frames_only=True)
    report["int8_calibration"] = {"crops": CALIB_CROPS, "method": CALIBRATION, "float_head": FLOAT_HEAD}
    report["minutes"]["total"] = round((time.time() - started) / 60, 1)
    print(json.dumps(report, indent=1))
    (MODELS / "deepfake_report.json").write_text(json.dumps(report, indent=1) + "\n")
    print("refreshing manifest and golden references (build.py --skip-int8)", flush=True)
    subprocess.run([sys.executable, str(TOOLS / "build.py"), "--skip-int8"], check=True)


if __name__ == "__main__":
    main()
