"""Rebuild fer's mini-Xception (Keras 2.0.5 HDF5) as ONNX with h5py and onnx.helper only.

No TensorFlow: the Keras graph is read from the file's model_config and each layer is emitted as
plain ONNX ops. BatchNormalization is folded into the preceding convolution's weights. Keras
'same' padding is reproduced exactly (TensorFlow puts the odd pixel at the bottom/right), and
'valid' is no padding.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def tf_same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _weights(f: h5py.File, layer: str) -> dict[str, np.ndarray]:
    group = f["model_weights"][layer]
    out = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            out[name.split("/")[-1].split(":")[0]] = np.array(obj, dtype=np.float32)

    group.visititems(visit)
    return out


def build(h5_path: str, out_path: str, input_size: int = 64) -> None:
    f = h5py.File(h5_path, "r")
    cfg = json.loads(f.attrs["model_config"])
    layers = cfg["config"]["layers"]
    by_name = {layer["name"]: layer for layer in layers}

    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    # Tensor name -> (channels, spatial size) so 'same' pads can be computed per layer.
    shape: dict[str, tuple[int, int]] = {}
    # Keras layer name -> ONNX tensor holding its output.
    tensor_of: dict[str, str] = {}
    # Convolutions whose following BatchNormalization is folded in: bn layer -> conv info.
    pending_conv: dict[str, dict] = {}

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def inputs_of(layer: dict) -> list[str]:
        return [tensor_of[n[0]] for n in layer["inbound_nodes"][0]]

    def emit_conv(name: str, src: str, weight: np.ndarray, bias: np.ndarray, kernel: int, stride: int,
                  padding: str, group: int, out_name: str) -> None:
        channels, size = shape[src]
        if padding == "same":
            lo, hi = tf_same_pads(size, kernel, stride)
        else:
            lo, hi = 0, 0
        out_size = (size + lo + hi - kernel) // stride + 1
        nodes.append(helper.make_node(
            "Conv", [src, const(name + "_W", weight), const(name + "_B", bias)], [out_name], name=name,
            kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[lo, lo, hi, hi], group=group))
        shape[out_name] = (weight.shape[0], out_size)

    # Each conv is emitted once its BatchNormalization (if any) is known, so BN folds into it.
    consumers: dict[str, list[str]] = {}
    for layer in layers:
        for n in (layer["inbound_nodes"][0] if layer["inbound_nodes"] else []):
            consumers.setdefault(n[0], []).append(layer["name"])

    for layer in layers:
        kind, name, c = layer["class_name"], layer["name"], layer["config"]
        if kind == "InputLayer":
            tensor_of[name] = "input"
            shape["input"] = (1, input_size)
            continue
        if kind == "BatchNormalization":
            conv_name = by_name[name]["inbound_nodes"][0][0][0]
            bn = _weights(f, name)
            _finish_conv(conv_name, pending_conv.pop(conv_name), (bn, c["epsilon"]), emit_conv, tensor_of, shape)
            tensor_of[name] = tensor_of[conv_name]
            continue
        src = inputs_of(layer)
        if kind in ("Conv2D", "SeparableConv2D"):
            w = _weights(f, name)
            kernel, stride = c["kernel_size"][0], c["strides"][0]
            bias = w.get("bias", np.zeros(c["filters"], dtype=np.float32))
            following = consumers.get(name, [])
            fold_bn = len(following) == 1 and by_name[following[0]]["class_name"] == "BatchNormalization"
            pending_conv[name] = {"src": src[0], "w": w, "kernel": kernel, "stride": stride,
                                  "padding": c["padding"], "bias": bias, "separable": kind == "SeparableConv2D"}
            if not fold_bn:
                _finish_conv(name, pending_conv.pop(name), None, emit_conv, tensor_of, shape)
            continue
        out = name
        if kind == "Activation" and c["activation"] == "relu":
            nodes.append(helper.make_node("Relu", src, [out], name=name))
            shape[out] = shape[src[0]]
        elif kind == "Activation" and c["activation"] == "softmax":
            nodes.append(helper.make_node("Softmax", src, [out], name=name, axis=1))
            shape[out] = shape[src[0]]
        elif kind == "MaxPooling2D":
            k, s = c["pool_size"][0], c["strides"][0]
            channels, size = shape[src[0]]
            lo, hi = tf_same_pads(size, k, s) if c["padding"] == "same" else (0, 0)
            nodes.append(helper.make_node("MaxPool", src, [out], name=name, kernel_shape=[k, k], strides=[s, s],
                                          pads=[lo, lo, hi, hi]))
            shape[out] = (channels, (size + lo + hi - k) // s + 1)
        elif kind == "Add":
            nodes.append(helper.make_node("Add", src, [out], name=name))
            shape[out] = shape[src[0]]
        elif kind == "GlobalAveragePooling2D":
            pooled = name + "_pooled"
            nodes.append(helper.make_node("GlobalAveragePool", src, [pooled], name=name))
            nodes.append(helper.make_node("Flatten", [pooled], [out], name=name + "_flatten", axis=1))
            shape[out] = (shape[src[0]][0], 1)
        else:
            raise SystemExit(f"{h5_path}: unsupported Keras layer {kind} ({name})")
        tensor_of[name] = out

    final = tensor_of[layers[-1]["name"]]
    nodes.append(helper.make_node("Identity", [final], ["probabilities"], name="output"))
    graph = helper.make_graph(
        nodes, "fer_mini_xception",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, input_size, input_size])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 7])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="veriface-tools")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, out_path)


def _finish_conv(name, info, bn, emit_conv, tensor_of, shape):
    w = info["w"]
    bias = info["bias"].astype(np.float64)
    if bn is not None:
        weights, eps = bn
        gamma = weights.get("gamma", np.ones_like(weights["moving_mean"]))
        beta = weights.get("beta", np.zeros_like(weights["moving_mean"]))
        mult = gamma / np.sqrt(weights["moving_variance"].astype(np.float64) + eps)
        bias = (bias - weights["moving_mean"]) * mult + beta
    else:
        mult = None
    src = info["src"]
    if info["separable"]:
        # Depthwise (HWC1 -> C1HW) without BN, then pointwise (11IO -> OI11) carrying the BN.
        dw = w["depthwise_kernel"].transpose(2, 3, 0, 1)
        channels = dw.shape[0]
        dw_out = name + "_dw"
        emit_conv(name + "_dw", src, dw, np.zeros(channels, dtype=np.float32), info["kernel"], info["stride"],
                  info["padding"], channels, dw_out)
        pw = w["pointwise_kernel"].transpose(3, 2, 0, 1).astype(np.float64)
        if mult is not None:
            pw = pw * mult[:, None, None, None]
        emit_conv(name, dw_out, pw.astype(np.float32), bias.astype(np.float32), 1, 1, "valid", 1, name)
    else:
        k = w["kernel"].transpose(3, 2, 0, 1).astype(np.float64)
        if mult is not None:
            k = k * mult[:, None, None, None]
        emit_conv(name, src, k.astype(np.float32), bias.astype(np.float32), info["kernel"], info["stride"],
                  info["padding"], 1, name)
    tensor_of[name] = name


def keras_reference(h5_path: str, x: np.ndarray) -> np.ndarray:
    """Independent numpy forward pass (no BN folding, explicit padding) to check the ONNX graph."""
    f = h5py.File(h5_path, "r")
    layers = json.loads(f.attrs["model_config"])["config"]["layers"]
    acts: dict[str, np.ndarray] = {}
    for layer in layers:
        kind, name, c = layer["class_name"], layer["name"], layer["config"]
        if kind == "InputLayer":
            acts[name] = x.transpose(0, 2, 3, 1)[0].astype(np.float64)  # HWC
            continue
        src = [acts[n[0]] for n in layer["inbound_nodes"][0]]
        w = _weights(f, name) if name in f["model_weights"] else {}
        if kind == "Conv2D":
            y = _conv_hwc(src[0], w["kernel"], c["strides"][0], c["padding"])
            acts[name] = y + w.get("bias", 0.0)
        elif kind == "SeparableConv2D":
            dw = w["depthwise_kernel"]
            ch = dw.shape[2]
            y = np.stack([_conv_hwc(src[0][..., i:i + 1], dw[:, :, i:i + 1, :], c["strides"][0], c["padding"])[..., 0]
                          for i in range(ch)], axis=-1)
            acts[name] = _conv_hwc(y, w["pointwise_kernel"], 1, "valid")
        elif kind == "BatchNormalization":
            acts[name] = (src[0] - w["moving_mean"]) / np.sqrt(w["moving_variance"] + c["epsilon"]) * w["gamma"] + w["beta"]
        elif kind == "Activation":
            if c["activation"] == "relu":
                acts[name] = np.maximum(src[0], 0)
            else:
                e = np.exp(src[0] - src[0].max())
                acts[name] = e / e.sum()
        elif kind == "MaxPooling2D":
            acts[name] = _maxpool_hwc(src[0], c["pool_size"][0], c["strides"][0])
        elif kind == "Add":
            acts[name] = src[0] + src[1]
        elif kind == "GlobalAveragePooling2D":
            acts[name] = src[0].mean(axis=(0, 1))
    return acts[layers[-1]["name"]][None].astype(np.float32)


def _pad_same(x, k, s):
    lo_h, hi_h = tf_same_pads(x.shape[0], k, s)
    lo_w, hi_w = tf_same_pads(x.shape[1], k, s)
    return lo_h, hi_h, lo_w, hi_w


def _conv_hwc(x, kernel, stride, padding):
    k = kernel.shape[0]
    if padding == "same":
        lo_h, hi_h, lo_w, hi_w = _pad_same(x, k, stride)
        x = np.pad(x, ((lo_h, hi_h), (lo_w, hi_w), (0, 0)))
    oh = (x.shape[0] - k) // stride + 1
    ow = (x.shape[1] - k) // stride + 1
    out = np.zeros((oh, ow, kernel.shape[3]))
    for dy in range(k):
        for dx in range(k):
            patch = x[dy:dy + stride * oh:stride, dx:dx + stride * ow:stride]
            out += patch @ kernel[dy, dx]
    return out


def _maxpool_hwc(x, k, stride):
    lo_h, hi_h, lo_w, hi_w = _pad_same(x, k, stride)
    x = np.pad(x, ((lo_h, hi_h), (lo_w, hi_w), (0, 0)), constant_values=-np.inf)
    oh = (x.shape[0] - k) // stride + 1
    ow = (x.shape[1] - k) // stride + 1
    out = np.full((oh, ow, x.shape[2]), -np.inf)
    for dy in range(k):
        for dx in range(k):
            out = np.maximum(out, x[dy:dy + stride * oh:stride, dx:dx + stride * ow:stride])
    return out
