"""The image graphs of a bundle: preprocess.onnx (kidrr.images.preprocess) and backbone.onnx.

backbone.onnx: images (n, 3, S, S) float32 -> features (n, R, F) float32, traced from the package's
network with torch's TorchScript exporter (the network is plain convolutions, nothing it
mistranslates; the batch axis stays dynamic and is checked at two batch sizes by verify).
"""
from __future__ import annotations

import io
import warnings

import onnx
import torch

from ..backbone import load_backbone
from ..images.preprocess import preprocessing_graph
from ..images.spec import backbone_spec

BACKBONE_INPUT, BACKBONE_OUTPUT = "images", "features"


def backbone_graph(name: str, opset: int, net=None) -> onnx.ModelProto:
    spec = backbone_spec(name)
    net = net if net is not None else load_backbone(name)
    example = torch.zeros(2, 3, spec.input_size, spec.input_size)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")   # the TorchScript exporter's deprecation notice
        torch.onnx.export(net, (example,), buf, input_names=[BACKBONE_INPUT], output_names=[BACKBONE_OUTPUT],
                          dynamic_axes={BACKBONE_INPUT: {0: "n"}, BACKBONE_OUTPUT: {0: "n"}},
                          opset_version=opset, dynamo=False, do_constant_folding=True)
    model = onnx.load_from_string(buf.getvalue())
    model.metadata_props.add(key="kidrr.backbone", value=name)
    onnx.checker.check_model(model, full_check=True)
    return model


def image_graphs(name: str, opset: int, net=None) -> dict:
    """{'preprocess': ModelProto, 'backbone': ModelProto} for a backbone name."""
    return {"preprocess": preprocessing_graph(name, opset), "backbone": backbone_graph(name, opset, net)}
