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
import functools
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
import degrade  # noqa: E402
import media  # noqa: E402
import preprocess as pp  # noqa: E402
import sbi  # noqa: E402

SEED = 0
HIDDEN = 32
CROP = 224
MESH = 192
# Blocks before this index stay frozen with --tune last (output 112 x 14 x 14).
FIRST_TUNED_BLOCK = 11
# As `analyze` and `eval` find faces (detector auto): short range first, full range on frames
# where it finds none (FF++ faces are small in 720p frames; kiosk and phone faces are large).
DETECTORS = ("face_short", "face_full")
# int8: calibration crops and method, and the fake head (pooling + Gemm) kept in float. Chosen
# with --compare-quantization on the validation split (see models/README.md).
CALIB_CROPS = 256
CALIBRATION = "minmax"
FLOAT_HEAD = True
OUT = {"frame": "deepfake_effnet_lite0.onnx", "int8": "deepfake_effnet_lite0_int8_qdq.onnx",
       "step": "deepfake_gru_step.onnx", "sequence": "deepfake_gru_sequence.onnx"}


VIDEO_EXT = (".mp4", ".mov", ".mkv", ".avi", ".webm")
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SHARED_DATA = MODELS.parent.parent / "shared" / "data"
# Whole sources kept out of training, to measure how verdicts hold on cameras, people and methods
# the model never saw (../shared/README.md: split by source as well as by identity). The fakes of
# methods other than FaceForensics++'s are validation-only.
HOLDOUT_SOURCES = ("aaf", "facemask_nomask_portraits", "deepface_testset", "dfl_stream_src", "deepfacelive_swap",
                   "sdfd_sd21", "basemax_gan")
# A fake source measured against the real frames it was made from (same stream, crop, encode).
PAIRED_REAL = {"deepfacelive_swap": "dfl_stream_src"}


def media_kind(path: str) -> str | None:
    ext = Path(path).suffix.lower()
    return "video" if ext in VIDEO_EXT else "image" if ext in IMAGE_EXT else None


def list_items(data: Path) -> list[dict]:
    """Every video and image under DATA as {path, name, label, group, source, kind}.

    DATA holds videos.csv (path,label[,identity_group]), files.csv (path,label,source,
    identity_if_known), or real/ and fake/ folders (each file its own identity group)."""
    rows = []
    if (data / "videos.csv").exists():
        with open(data / "videos.csv") as f:
            rows = [(r["path"], r["label"], data.name, r.get("identity_group") or r["path"]) for r in csv.DictReader(f)]
    elif (data / "files.csv").exists():
        with open(data / "files.csv") as f:
            for r in csv.DictReader(f):
                identity = r.get("identity_if_known") or ""
                group = identity if identity and not identity.startswith("synthetic") else r["path"]
                # A source's clips report with its stills ("dfl_stream_src_videos" -> "dfl_stream_src").
                rows.append((r["path"], r["label"], r["source"].removesuffix("_videos"), group))
    else:
        for sub in ("real", "fake"):
            for p in sorted((data / sub).rglob("*")):
                name = str(p.relative_to(data))
                rows.append((name, sub, data.name, name))
    items = []
    for path, label, source, group in rows:
        kind = media_kind(path)
        if kind is None:
            continue
        items.append({"path": str(data / path), "name": f"{data.name}/{path}", "label": 1 if label == "fake" else 0,
                      "group": f"{data.name}/{group}", "source": source, "kind": kind})
    if not items:
        raise SystemExit(f"{data}: no videos or images (expected videos.csv, files.csv or real/ and fake/ folders)")
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


@functools.cache
def _anchors(name: str) -> np.ndarray:
    spec = mf.DETECTORS[name]
    return pp.blazeface_anchors(spec["size"], spec["strides"], spec["anchors_per_layer"])


def detect(frame: np.ndarray) -> list[dict]:
    """Faces in a frame, best first, from the first detector that finds any."""
    for name in DETECTORS:
        spec = mf.DETECTORS[name]
        anchors = _anchors(name)
        tensor, geom = pp.detector_input(frame, spec["size"])
        reg, cls = _session(name).run(None, {"input": tensor})
        faces = [pp.unletterbox(f, geom, spec["size"]) for f in
                 pp.decode_blazeface(reg, cls, anchors, spec["size"], spec["score_threshold"], spec["nms_iou"])]
        if faces:
            return faces
    return []


def extract_item(job: tuple[dict, list[int], int, int, str]) -> str:
    """Face crops of a video (clips of frames) or an image (one one-frame clip), cached as .npz."""
    item, starts, frames, stride, dest = job
    out = Path(dest)
    if out.exists():
        return out.name
    crops, marks, clips = [], [], []
    for clip, start in enumerate(starts):
        prev = None
        if item["kind"] == "image":
            try:
                source = [media.read_rgb(Path(item["path"]))]
            except Exception as e:  # noqa: BLE001 - one unreadable image must not stop a long run
                print(f"  {item['name']}: unreadable ({e}); skipped", flush=True)
                source = []
        else:
            source = media.sample_frames(Path(item["path"]), frames, stride=stride, start=start)
        for frame in source:
            faces = detect(frame)
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
    dest = CACHE / f"faces_auto_f{args.frames}_s{args.stride}"
    dest.mkdir(parents=True, exist_ok=True)
    jobs = []
    for item in items:
        starts = [0] if item["kind"] == "image" else [0, args.second_clip_start] if item["label"] == 0 else [0]
        item["faces"] = str(dest / f"{key_of(item)}.npz")
        jobs.append((item, starts, args.frames, args.stride, item["faces"]))
    todo = [j for j in jobs if not Path(j[4]).exists()]
    print(f"faces: {len(jobs) - len(todo)} cached, {len(todo)} to extract with {workers} workers", flush=True)
    t0 = time.time()
    with Pool(workers) as pool:
        for n, name in enumerate(pool.imap_unordered(extract_item, todo, chunksize=4)):
            if (n + 1) % 100 == 0 or n + 1 == len(todo):
                print(f"  [{n + 1}/{len(todo)}] {time.time() - t0:.0f} s", flush=True)


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
        for n, name in enumerate(pool.imap_unordered(sbi_job, todo, chunksize=4)):
            if (n + 1) % 100 == 0 or n + 1 == len(todo):
                print(f"  [{n + 1}/{len(todo)}]", flush=True)


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
                              "group": item["group"], "video": item["path"], "source": item["source"]})
    return clips


def augment(crops: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random mirror and quality degradation of each crop, whatever its label."""
    out = np.empty_like(crops)
    for i, crop in enumerate(crops):
        out[i] = degrade.degrade(crop[:, ::-1] if rng.random() < 0.5 else crop, rng)
    return out


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
    for kind, share in (("real", 0.5), ("fake", args.fake_share), ("sbi", 0.5 - args.fake_share)):
        n = (kinds == kind).sum()
        if n:
            weights[kinds == kind] = share * len(labels) / n
    if (kinds == "fake").sum() == 0 or (kinds == "sbi").sum() == 0:
        weights[labels == 1] = 0.5 * len(labels) / max(1, (labels == 1).sum())

    frozen = args.tune != "all"
    copies = max(1, args.degraded_copies)
    if frozen:
        # The frozen trunk runs once per degraded copy of every crop; epoch e trains on copy e % copies.
        key = hashlib.sha256(f"{args.tune}:{copies}:{len(crops)}:{crops[::97].tobytes().hex()[:4096]}".encode()).hexdigest()[:12]
        cache_path = CACHE / f"trunk_{args.tune}_{key}.pt"
        if cache_path.exists():
            inputs = torch.load(cache_path)
            print(f"frame model: frozen trunk outputs loaded from the cache ({cache_path.name})", flush=True)
        else:
            t0 = time.time()
            inputs = []
            for copy in range(copies):
                rng_aug = np.random.default_rng(SEED + 1000 + copy)
                outs = []
                for i in range(0, len(crops), 32):
                    outs.append(trunk(normalise(augment(crops[i:i + 32], rng_aug)).to(device)).half().cpu())
                    done = copy * len(crops) + i + 32
                    if (i // 32) % 40 == 0:
                        print(f"  trunk: {min(done, copies * len(crops))}/{copies * len(crops)} crops, "
                              f"{time.time() - t0:.0f} s", flush=True)
                inputs.append(torch.cat(outs))
            inputs = torch.stack(inputs)
            torch.save(inputs, cache_path)
            print(f"frame model: frozen trunk run on {copies} x {len(crops)} degraded crops in {time.time() - t0:.0f} s",
                  flush=True)
    ckpt = CACHE / f"frame_{args.tune}_fake{args.fake_share}.pt"
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
                x = inputs[epoch % copies][idx].float().to(device)
            else:
                x = trunk(normalise(augment(crops[idx], rng)).to(device))
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


def threshold_for_bpcer(real_scores: np.ndarray, bpcer: float) -> float:
    """The lowest threshold that calls at most `bpcer` of these real faces fake (score >= t)."""
    r = np.sort(np.asarray(real_scores, np.float64))
    allowed = int(np.floor(bpcer * len(r)))
    # Scores strictly above r[-allowed-1] are the `allowed` highest; ties stay real.
    t = float(np.nextafter(np.float32(r[len(r) - allowed - 1]), np.float32(1)))
    return min(t, 1.0)


def eer(labels: np.ndarray, scores: np.ndarray) -> float:
    """Equal error rate: where the share of fakes passed equals the share of reals rejected."""
    best = 1.0
    for t in np.unique(scores):
        apcer = float((scores[labels == 1] < t).mean())
        bpcer = float((scores[labels == 0] >= t).mean())
        best = min(best, max(apcer, bpcer))
    return best


def source_table(clips: list[dict], key: str, threshold: float, video_scores: dict | None = None) -> list[dict]:
    """One row per source: frame AUC and EER against the other class, BPCER or APCER at the threshold.

    A source with both labels is scored on its own; a fake source listed in PAIRED_REAL against the
    real frames it was made from; any other one-label source against the pooled opposite class of
    every other source except FaceForensics++ (its own row has both labels)."""
    by_source: dict[str, list[dict]] = {}
    for c in clips:
        by_source.setdefault(c["source"], []).append(c)
    frames = lambda cs: np.concatenate([c[key] for c in cs]) if cs else np.zeros(0)  # noqa: E731
    rows = []
    for source, cs in sorted(by_source.items()):
        labels = {c["label"] for c in cs}
        if len(labels) == 2:
            opposite = []
        elif 1 in labels and source in PAIRED_REAL:
            opposite = [c for c in by_source.get(PAIRED_REAL[source], []) if c["label"] == 0]
        else:
            want = 1 - next(iter(labels))
            opposite = [c for c in clips if c["label"] == want and c["source"] != source and "faceforensics" not in c["source"]]
        own_l = np.concatenate([np.full(len(c[key]), c["label"]) for c in cs])
        own_s = frames(cs)
        opp_l = np.concatenate([np.full(len(c[key]), c["label"]) for c in opposite]) if opposite else np.zeros(0)
        all_l, all_s = np.concatenate([own_l, opp_l]), np.concatenate([own_s, frames(opposite)])
        row = {"source": source, "labels": "/".join(["real", "fake"][v] for v in sorted(labels)),
               "items": len({c["video"] for c in cs}), "frames": int(len(own_s)),
               "frame_auc": round(auc(all_l, all_s), 4), "eer": round(eer(all_l, all_s), 4) if len(set(all_l)) == 2 else None}
        if 0 in labels:
            row["bpcer"] = round(float((own_s[own_l == 0] >= threshold).mean()), 4)
        if 1 in labels:
            row["apcer"] = round(float((own_s[own_l == 1] < threshold).mean()), 4)
        videos = [c for c in cs if len(c[key]) > 1]
        if len(labels) == 2 and videos:
            row |= {k: v for k, v in metrics(videos, key, video_scores, threshold).items() if k.startswith("video")}
        rows.append(row)
    return rows


def markdown_table(rows: list[dict]) -> str:
    cols = ("source", "labels", "items", "frames", "frame_auc", "eer", "bpcer", "apcer", "video_auc_frame_mean",
            "video_auc_gru")
    fmt = lambda v: "—" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k in cols) + " |" for r in rows]
    return "\n".join(lines)


def robustness(path: Path, clips: list[dict], count: int = 200) -> dict:
    """How far sharpening or JPEG q 30 moves the f32 model's score on held-aside real faces."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path))
    real = np.concatenate([c["crops"][:1] for c in clips if c["label"] == 0])
    real = real[np.random.default_rng(SEED).permutation(len(real))[:count]]
    prob = lambda crop: float(1 / (1 + np.exp(-sess.run(None, {"input": normalise(crop[None]).numpy()})[1][0, 0])))  # noqa: E731
    base = np.array([prob(c) for c in real])
    out = {"faces": int(len(real))}
    for name, fn in (("sharpen_1.0", lambda c: degrade.sharpen(c, 1.0)), ("jpeg_q30", lambda c: degrade.jpeg(c, 30))):
        delta = np.abs(np.array([prob(fn(c)) for c in real]) - base)
        out[name] = {"mean_abs_delta": round(float(delta.mean()), 4), "p95_abs_delta": round(float(np.quantile(delta, 0.95)), 4),
                     "max_abs_delta": round(float(delta.max()), 4)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, action="append",
                    help="a data folder (repeatable); default: ../shared's faceforensics and faces")
    ap.add_argument("--holdout", default=",".join(HOLDOUT_SOURCES),
                    help="sources kept out of training and reported one by one (comma-separated; '' for none)")
    ap.add_argument("--train-fakes", default="faceforensics",
                    help="sources whose fakes train (comma-separated; '' = real faces and SBI only, the paper's recipe)")
    ap.add_argument("--bpcer", type=float, default=0.05, help="share of real people the shipped threshold may reject")
    ap.add_argument("--fake-share", type=float, default=0.25,
                    help="weight of real fakes in training (SBI gets 0.5 minus it; 0: real + SBI only, same trunk cache)")
    ap.add_argument("--degraded-copies", type=int, default=2, help="degraded versions of each training crop (frozen trunk)")
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
    ap.add_argument("--evaluate", type=Path, metavar="ONNX",
                    help="only score this frame model on the validation and held-aside sources (same table)")
    ap.add_argument("--quantize-only", action="store_true",
                    help="only re-quantize the exported f32 frame model, re-measure int8, refresh manifest")
    ap.add_argument("--compare-quantization", action="store_true",
                    help="only re-quantize the exported f32 model with several calibrations and report each")
    args = ap.parse_args()

    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(args.workers)
    started = time.time()
    data = args.data or [SHARED_DATA / "faceforensics", SHARED_DATA / "faces"]
    items = [i for d in data for i in list_items(d)]
    extract_all(items, args, args.workers)
    holdout = {x for x in args.holdout.split(",") if x}
    train_fakes = {x for x in args.train_fakes.split(",") if x}
    # Held aside: whole sources, and fakes of methods training does not use.
    held_items = [i for i in items if i["source"] in holdout or (i["label"] == 1 and i["source"] not in train_fakes)]
    rest = [i for i in items if i not in held_items]
    rng = np.random.default_rng(SEED)
    groups = sorted({i["group"] for i in rest})
    rng.shuffle(groups)
    val_groups = set(groups[: max(1, int(len(groups) * args.val_fraction))])
    # Self-blends only of the faces that train or validate (the held-aside reals stay as they are).
    for i in held_items:
        i["sbi"] = []
    sbi_all(rest, args.sbi_variants, args.workers)
    t_data = time.time() - started

    train = load_clips([i for i in rest if i["group"] not in val_groups])
    val = load_clips([i for i in rest if i["group"] in val_groups])
    held = load_clips(held_items)
    count = lambda cs, k: sum(len(c["crops"]) for c in cs if c["kind"] == k)  # noqa: E731
    print(f"train: {count(train, 'real')} real, {count(train, 'fake')} fake, {count(train, 'sbi')} SBI frames; "
          f"validation: {count(val, 'real')} real, {count(val, 'fake')} fake ({len(val_groups)} of {len(groups)} groups); "
          f"held-aside sources: {count(held, 'real')} real, {count(held, 'fake')} fake frames", flush=True)
    val_eval = [c for c in val if c["kind"] != "sbi"]
    every = val_eval + held

    if args.compare_quantization:
        results = compare_quantization(train, val_eval, 0.5)
        print(json.dumps(results, indent=1))
        (CACHE / "quantization.json").write_text(json.dumps(results, indent=1) + "\n")
        return

    if args.evaluate:
        # Another frame model (e.g. an earlier one) through the same sources and threshold rule.
        onnx_probs(args.evaluate, every, "prob_eval")
        t = threshold_for_bpcer(np.concatenate([c["prob_eval"] for c in val_eval if c["label"] == 0]), args.bpcer)
        rows = source_table(every, "prob_eval", t)
        print(f"{args.evaluate}: threshold {t:.4f} (BPCER <= {args.bpcer} on validation reals)\n{markdown_table(rows)}")
        (CACHE / f"evaluate_{args.evaluate.stem}.json").write_text(json.dumps({"threshold": t, "sources": rows}, indent=1) + "\n")
        return

    if args.quantize_only:
        path = MODELS / "deepfake_report.json"
        report = json.loads(path.read_text())
        quantize(calibration_crops(train, CALIB_CROPS), CALIBRATION, float_head=FLOAT_HEAD)
        onnx_probs(MODELS / OUT["frame"], every, "prob_f32")
        onnx_probs(MODELS / OUT["int8"], every, "prob_int8")
        report["sources_int8"] = source_table(every, "prob_int8", report["threshold"])
        report["int8_calibration"] = {"crops": CALIB_CROPS, "method": CALIBRATION, "float_head": FLOAT_HEAD}
        print(markdown_table(report["sources_int8"]))
        path.write_text(json.dumps(report, indent=1) + "\n")
        subprocess.run([sys.executable, str(TOOLS / "build.py"), "--skip-int8"], check=True)
        return

    t0 = time.time()
    frame_model = train_frame_model(train, args, device)
    t_frame = time.time() - t0
    if args.no_export:
        # A comparison run: the frame model's table only (no GRU, no files written).
        frame_outputs(frame_model, every)
        threshold = threshold_for_bpcer(np.concatenate([c["prob"] for c in val_eval if c["label"] == 0]), args.bpcer)
        report = {"tune": args.tune, "fake_share": args.fake_share, "epochs": args.epochs, "threshold": threshold,
                  "frame_model_minutes": round(t_frame / 60, 1), "sources_torch": source_table(every, "prob", threshold)}
        print(f"threshold {threshold:.4f}\n{markdown_table(report['sources_torch'])}")
        (CACHE / f"report_{args.tune}_fake{args.fake_share}.json").write_text(json.dumps(report, indent=1) + "\n")
        return
    t0 = time.time()
    frame_outputs(frame_model, train + val + held)
    temporal = train_temporal(train, args.gru_epochs)
    t_gru = time.time() - t0
    # The shipped threshold: chosen on the validation identities' real faces of the training
    # sources, so the held-aside sources test it on people and cameras it never saw.
    threshold = threshold_for_bpcer(np.concatenate([c["prob"] for c in val_eval if c["label"] == 0]), args.bpcer)
    report = {"device": str(device), "tune": args.tune, "detectors": list(DETECTORS),
              "data": [str(Path(d).name) for d in data], "holdout_sources": sorted(holdout),
              "train_fake_sources": sorted(train_fakes), "fake_share": args.fake_share,
              "degraded_copies": args.degraded_copies,
              "epochs": args.epochs, "train_videos_and_images": len({c["video"] for c in train}),
              "val_identity_groups": len(val_groups), "threshold": round(threshold, 4),
              "threshold_rule": f"BPCER <= {args.bpcer} on the validation identities' real frames",
              "train_frames": {k: count(train, k) for k in ("real", "fake", "sbi")},
              "minutes": {"faces_and_sbi": round(t_data / 60, 1), "frame_model": round(t_frame / 60, 1),
                          "temporal": round(t_gru / 60, 1)}}
    export(frame_model, temporal, calibration_crops(train, CALIB_CROPS))
    onnx_probs(MODELS / OUT["frame"], every + [c for c in val if c["kind"] == "sbi"], "prob_f32")
    onnx_probs(MODELS / OUT["int8"], every, "prob_int8")
    video_gru = gru_scores(MODELS / OUT["sequence"], every)
    report["sources_f32"] = source_table(every, "prob_f32", threshold, video_gru)
    report["sources_int8"] = source_table(every, "prob_int8", threshold)
    report["val_real_vs_sbi_f32"] = metrics([c for c in val if c["kind"] != "fake"], "prob_f32", None, threshold,
                                            frames_only=True)
    report["robustness_f32"] = robustness(MODELS / OUT["frame"], held)
    report["int8_calibration"] = {"crops": CALIB_CROPS, "method": CALIBRATION, "float_head": FLOAT_HEAD}
    report["minutes"]["total"] = round((time.time() - started) / 60, 1)
    print(json.dumps(report, indent=1))
    print("f32:\n" + markdown_table(report["sources_f32"]) + "\nint8:\n" + markdown_table(report["sources_int8"]))
    (MODELS / "deepfake_report.json").write_text(json.dumps(report, indent=1) + "\n")
    print("refreshing manifest and golden references (build.py --skip-int8)", flush=True)
    subprocess.run([sys.executable, str(TOOLS / "build.py"), "--skip-int8"], check=True)


if __name__ == "__main__":
    main()
