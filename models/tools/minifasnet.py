#!/usr/bin/env python3
"""The 80 px MiniFASNet PAD models (PyTorch state dicts) as ONNX files, for evaluation.

    python models/tools/minifasnet.py [--pad-dir ../shared/models/pad] [--out models/tools/.cache/pad]

The state dicts (Silent-Face-Anti-Spoofing's MiniFASNetV2 and MiniFASNetV1SE, Apache-2.0) come
without their architecture. It is written here from the published description: a 3x3 stride-2
stem, a depthwise 3x3, then three stages of stride-2 depthwise-separable blocks each followed by
residual blocks (4, 6, 2), a 1x1 to 512 channels, a 5x5 depthwise to 1x1, a 128-d embedding and
3 logits (class 1 live). Input: raw 0-255 RGB (the stem's input channels are reversed from the
publisher's BGR). Conv blocks are conv + BatchNorm + PReLU, projections conv + BatchNorm;
the SE variant squeezes the last residual block of each stage. Every channel count and group
comes from the weights' shapes, so a file that does not fit the layout fails to load
(`load_state_dict(strict=True)`).

The ONNX files are written outside the repository (they are converted from research-only
evaluation weights: never commit them); pad.py lists them in models/pad.toml by their sha256.
Needs torch (models/tools/requirements.txt's training set).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch
from torch import nn

TOOLS = Path(__file__).resolve().parent
DEFAULT_PAD_DIR = TOOLS.parents[2] / "shared" / "models" / "pad"
DEFAULT_OUT = TOOLS / ".cache" / "pad"
# state dict -> ONNX file name
FILES = {
    "2.7_80x80_MiniFASNetV2.pth": "minifasnetv2_80_silentface.onnx",
    "4_0_0_80x80_MiniFASNetV1SE.pth": "minifasnetv1se_80_silentface.onnx",
}


class ConvBlock(nn.Module):
    """conv (no bias) + BatchNorm, + PReLU unless `linear`."""

    def __init__(self, sd: dict, prefix: str, stride: int, linear: bool = False):
        super().__init__()
        w = sd[f"{prefix}.conv.weight"]
        out_c, in_per_group, k, _ = w.shape
        groups = out_c if in_per_group == 1 and out_c > 1 else 1
        in_c = in_per_group * groups
        pad = 0 if prefix.endswith("conv_6_dw") else k // 2
        self.conv = nn.Conv2d(in_c, out_c, k, stride, pad, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_c)
        self.prelu = None if linear else nn.PReLU(out_c)

    def forward(self, x):
        x = self.bn(self.conv(x))
        return x if self.prelu is None else self.prelu(x)


class SE(nn.Module):
    def __init__(self, sd: dict, prefix: str):
        super().__init__()
        w1, w2 = sd[f"{prefix}.fc1.weight"], sd[f"{prefix}.fc2.weight"]
        self.fc1 = nn.Conv2d(w1.shape[1], w1.shape[0], 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w1.shape[0])
        self.fc2 = nn.Conv2d(w2.shape[1], w2.shape[0], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(w2.shape[0])

    def forward(self, x):
        s = x.mean(dim=(2, 3), keepdim=True)
        s = self.bn2(self.fc2(torch.relu(self.bn1(self.fc1(s)))))
        return x * torch.sigmoid(s)


class DepthWise(nn.Module):
    """1x1 expand, depthwise 3x3, 1x1 project; with a shortcut (and SE) inside a stage."""

    def __init__(self, sd: dict, prefix: str, stride: int, residual: bool):
        super().__init__()
        self.conv = ConvBlock(sd, f"{prefix}.conv", 1)
        self.conv_dw = ConvBlock(sd, f"{prefix}.conv_dw", stride)
        self.project = ConvBlock(sd, f"{prefix}.project", 1, linear=True)
        self.se_module = SE(sd, f"{prefix}.se_module") if f"{prefix}.se_module.fc1.weight" in sd else None
        self.residual = residual

    def forward(self, x):
        y = self.project(self.conv_dw(self.conv(x)))
        if self.se_module is not None:
            y = self.se_module(y)
        return x + y if self.residual else y


class Residual(nn.Module):
    def __init__(self, sd: dict, prefix: str):
        super().__init__()
        blocks = sorted({int(k[len(prefix) + 7:].split(".")[0]) for k in sd if k.startswith(f"{prefix}.model.")})
        self.model = nn.Sequential(*[DepthWise(sd, f"{prefix}.model.{i}", 1, True) for i in blocks])

    def forward(self, x):
        return self.model(x)


class MiniFASNet(nn.Module):
    def __init__(self, sd: dict):
        super().__init__()
        self.conv1 = ConvBlock(sd, "conv1", 2)
        self.conv2_dw = ConvBlock(sd, "conv2_dw", 1)
        self.conv_23 = DepthWise(sd, "conv_23", 2, False)
        self.conv_3 = Residual(sd, "conv_3")
        self.conv_34 = DepthWise(sd, "conv_34", 2, False)
        self.conv_4 = Residual(sd, "conv_4")
        self.conv_45 = DepthWise(sd, "conv_45", 2, False)
        self.conv_5 = Residual(sd, "conv_5")
        self.conv_6_sep = ConvBlock(sd, "conv_6_sep", 1)
        self.conv_6_dw = ConvBlock(sd, "conv_6_dw", 1, linear=True)
        lw, pw = sd["linear.weight"], sd["prob.weight"]
        self.linear = nn.Linear(lw.shape[1], lw.shape[0], bias=False)
        self.bn = nn.BatchNorm1d(lw.shape[0])
        self.prob = nn.Linear(pw.shape[1], pw.shape[0], bias=False)

    def forward(self, x):
        for stage in (self.conv1, self.conv2_dw, self.conv_23, self.conv_3, self.conv_34, self.conv_4,
                      self.conv_45, self.conv_5, self.conv_6_sep, self.conv_6_dw):
            x = stage(x)
        return self.prob(self.bn(self.linear(torch.flatten(x, 1))))


def load(path: Path) -> MiniFASNet:
    raw = torch.load(path, map_location="cpu", weights_only=True)
    sd = {k.removeprefix("module."): v for k, v in raw.items()}
    net = MiniFASNet(sd)
    net.load_state_dict(sd, strict=True)
    # The publisher feeds BGR; reversing the stem's input channels takes RGB, as every other
    # veriface model does, with the same arithmetic.
    with torch.no_grad():
        net.conv1.conv.weight.copy_(net.conv1.conv.weight.flip(1))
    return net.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pad-dir", type=Path, default=DEFAULT_PAD_DIR)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for pth, onnx_name in FILES.items():
        net = load(args.pad_dir / pth)
        path = args.out / onnx_name
        torch.onnx.export(net, torch.zeros(1, 3, 80, 80), str(path), input_names=["input"],
                          output_names=["output"], opset_version=13, dynamo=False)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        print(f"{path}: sha256 {digest}")


if __name__ == "__main__":
    main()
