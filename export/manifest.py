"""manifest.json of a bundle (docs/bundle.md): writing it, and checking a bundle against it (torch-free)."""
from __future__ import annotations

import onnx

from ..fileio import sha256_file

FORMAT = "kidrr-bundle/1"
MANIFEST = "manifest.json"
GRAPHS = ("image_encoder", "text_encoder", "similarity")
# Optional, present when the checkpoint names an image backbone (docs/images.md). preprocess always
# runs on ONNX Runtime's CPU provider; TensorRT engines are built for GRAPHS only.
IMAGE_GRAPHS = ("preprocess", "backbone")
_DTYPES = {onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.INT64: "int64",
           onnx.TensorProto.INT32: "int32", onnx.TensorProto.BOOL: "bool", onnx.TensorProto.DOUBLE: "float64"}


def _io(values) -> list:
    out = []
    for v in values:
        t = v.type.tensor_type
        shape = [d.dim_param if d.HasField("dim_param") else int(d.dim_value) for d in t.shape.dim]
        out.append({"name": v.name, "dtype": _DTYPES.get(t.elem_type, str(t.elem_type)), "shape": shape,
                    "dynamic_axes": {str(i): d for i, d in enumerate(shape) if isinstance(d, str)}})
    return out


def graph_entry(model: onnx.ModelProto, file: str, path: str, precision: str) -> dict:
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return {"file": file, "sha256": sha256_file(path), "opset": opset, "precision": precision,
            "inputs": _io(model.graph.input), "outputs": _io(model.graph.output),
            "kidrr_functions": sorted({f.name for f in model.functions if f.domain == "kidrr"})}


def check_bundle(bundle: str) -> dict:
    """The manifest, after the runtime's own checks (kidrr.runtime.bundle.load_bundle: every field's type,
    paths inside the bundle, every file's sha256): one loader, so lint and the TensorRT build refuse
    exactly what the runtime refuses, with the same typed errors."""
    from ..runtime.bundle import load_bundle
    return load_bundle(bundle).manifest
