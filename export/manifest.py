"""manifest.json of a bundle (docs/bundle.md): writing it, and checking a bundle against it (torch-free)."""
from __future__ import annotations

import json
import os

import onnx

from ..errors import BundleError
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


def load_manifest(bundle: str) -> dict:
    path = os.path.join(bundle, MANIFEST)
    if not os.path.isdir(bundle):
        raise BundleError(f"bundle folder {bundle} does not exist; make one with `kidrr-export onnx --out {bundle}`")
    if not os.path.exists(path):
        raise BundleError(f"{path} is missing: {bundle} is not a kidrr bundle (or its export did not finish)")
    try:
        with open(path) as fh:
            manifest = json.load(fh)
    except ValueError as exc:
        raise BundleError(f"{path} is not valid JSON ({exc}); re-export the bundle") from exc
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: bundle format {manifest.get('format')!r} is unknown; this kidrr reads {FORMAT}")
    return manifest


def check_bundle(bundle: str) -> dict:
    """The manifest, after checking every file it names exists and has its recorded sha256."""
    manifest = load_manifest(bundle)
    files = {g["file"]: g["sha256"] for g in manifest.get("graphs", {}).values()}
    files.update(manifest.get("files", {}))
    missing_graphs = [g for g in GRAPHS if g not in manifest.get("graphs", {})]
    if missing_graphs:
        raise BundleError(f"{bundle}/{MANIFEST} lists no {missing_graphs} graph(s); re-export the bundle")
    for name, digest in sorted(files.items()):
        path = os.path.join(bundle, name)
        if not os.path.exists(path):
            raise BundleError(f"{path} is missing from the bundle; re-export it")
        actual = sha256_file(path)
        if actual != digest:
            raise BundleError(f"{path} was changed after export: sha256 {actual[:16]}... but the manifest says "
                              f"{digest[:16]}...; re-export the bundle instead of editing it")
    return manifest
