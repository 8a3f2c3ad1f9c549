"""The preprocessing graph: RGB8 (H, W, 3) uint8 -> the backbone's input (1, 3, S, S) float32.

Written with onnx.helper (torch-free) and shipped in the bundle as preprocess.onnx, so Python and the
C ABI run the very same resize and normalisation (docs/images.md states the contract). It always
runs on ONNX Runtime's CPU provider: images differ in size, so each is its own call; the backbone
then takes the stacked batch.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from kidrr.errors import BundleError

from .decode import check_pixels
from .spec import PREPROCESSING, backbone_spec

INPUT, OUTPUT = "pixels", "images"


def preprocessing_graph(backbone: str, opset: int = 18) -> onnx.ModelProto:
    """HWC uint8 -> NCHW float32 at the backbone's size: Cast, Transpose, antialiased linear Resize,
    (x - mean) / scale. Antialias (opset >= 18) widens the triangle filter when shrinking and
    exclude_outside=1 renormalises the weights cut off at the borders: together that is Pillow's
    BILINEAR on a float image (equal within float32 rounding, tests/test_images.py)."""
    if opset < 18:
        raise ValueError("the preprocessing graph needs opset >= 18 (Resize antialias)")
    side = backbone_spec(backbone).input_size
    inits = [helper.make_tensor("axis0", TensorProto.INT64, [1], [0]),
             helper.make_tensor("sizes", TensorProto.INT64, [4], [1, 3, side, side]),
             helper.make_tensor("mean", TensorProto.FLOAT, [], [PREPROCESSING["mean"]]),
             helper.make_tensor("inv_scale", TensorProto.FLOAT, [], [1.0 / PREPROCESSING["scale"]])]
    nodes = [
        # Transpose the uint8 image before the cast: the 4-byte copy is made only once.
        helper.make_node("Unsqueeze", [INPUT, "axis0"], ["nhwc"]),
        helper.make_node("Transpose", ["nhwc"], ["nchw_u8"], perm=[0, 3, 1, 2]),
        helper.make_node("Cast", ["nchw_u8"], ["nchw"], to=TensorProto.FLOAT),
        helper.make_node("Resize", ["nchw", "", "", "sizes"], ["resized"], mode="linear", antialias=1,
                         exclude_outside=1, coordinate_transformation_mode="half_pixel"),
        helper.make_node("Sub", ["resized", "mean"], ["centred"]),
        helper.make_node("Mul", ["centred", "inv_scale"], [OUTPUT]),
    ]
    graph = helper.make_graph(nodes, "kidrr_preprocess",
                              [helper.make_tensor_value_info(INPUT, TensorProto.UINT8, ["H", "W", 3])],
                              [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [1, 3, side, side])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="kidrr-export", ir_version=10)
    model.metadata_props.add(key="kidrr.preprocessing", value=PREPROCESSING["name"])
    model.metadata_props.add(key="kidrr.backbone", value=backbone)
    onnx.checker.check_model(model, full_check=True)
    return model


class Preprocessor:
    """Runs a preprocessing graph (a path, bytes or ModelProto) on RGB8 arrays with ONNX Runtime CPU."""

    def __init__(self, graph, threads: int = 0):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        if hasattr(graph, "SerializeToString"):
            graph = graph.SerializeToString()
        try:
            self.session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own unexported exception types
            raise BundleError(f"the preprocessing graph cannot be loaded by onnxruntime ({str(exc)[:300]}); "
                              f"re-export the bundle") from exc
        (inp,), (out,) = self.session.get_inputs(), self.session.get_outputs()
        if inp.name != INPUT or out.name != OUTPUT or len(out.shape) != 4:
            raise BundleError(f"the preprocessing graph has input {inp.name!r} / output {out.name!r} {out.shape}; "
                              f"the contract (docs/images.md) is {INPUT!r} (H, W, 3) uint8 -> {OUTPUT!r} "
                              f"(1, 3, S, S); re-export the bundle")
        self.input_size = int(out.shape[2])

    def __call__(self, pixels: np.ndarray, name: str = "pixels") -> np.ndarray:
        """One RGB8 (H, W, 3) image -> (3, S, S) float32."""
        arr = check_pixels(pixels, name)
        return self.session.run([OUTPUT], {INPUT: arr})[0][0]

    def batch(self, images, names=None) -> np.ndarray:
        """A list of RGB8 arrays -> (n, 3, S, S) float32."""
        names = names or [f"pixels[{i}]" for i in range(len(images))]
        return np.stack([self(img, name) for img, name in zip(images, names)])
