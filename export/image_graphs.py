"""The image graphs of a bundle: preprocess.onnx (kidrr.images.preprocess) and backbone.onnx
(kidrr.backbone.backbone_onnx, the same graph kidrr features runs)."""
from __future__ import annotations

from ..backbone import backbone_onnx
from ..images.preprocess import preprocessing_graph


def image_graphs(name: str, opset: int, net=None) -> dict:
    """{'preprocess': ModelProto, 'backbone': ModelProto} for a backbone name."""
    return {"preprocess": preprocessing_graph(name, opset), "backbone": backbone_onnx(name, opset, net)}
