"""Native TensorRT engines from bundle/engines/<key>/<graph>.plan (NVIDIA hosts only).

NOT RUN on real TensorRT: no machine this was written on has it. The import is guarded, and
everything before the first engine call (engine discovery, the reasons it cannot run) is tested.
Device buffers come from torch's CUDA allocator (the one CUDA array library we can count on where
TensorRT is); a host without torch+CUDA gets BackendUnavailable with that reason.
"""
from __future__ import annotations

import os

import numpy as np

from kidrr.errors import BackendUnavailable, BundleError
from kidrr.optional import import_tensorrt

from .bundle import Bundle
from .runner import Runner, as_float32, as_int64

GRAPHS = ("image_encoder", "text_encoder", "similarity")


def engine_folder(bundle: Bundle, key: str | None = None) -> str:
    """The engines/<key> folder to use: the given key, or the only one built."""
    root = os.path.join(bundle.path, "engines")
    keys = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))) if os.path.isdir(root) else []
    if key is None:
        if len(keys) != 1:
            raise BackendUnavailable(f"bundle {bundle.path} has {len(keys)} TensorRT engine set(s) {keys}; "
                                     f"build one with `kidrr export trt` on this GPU"
                                     + (" or pass engine_key=" if keys else ""))
        key = keys[0]
    folder = os.path.join(root, key)
    missing = [g for g in GRAPHS if not os.path.isfile(os.path.join(folder, g + ".plan"))]
    if missing:
        raise BackendUnavailable(f"engine set {folder} lacks {missing} (.plan); rebuild it with `kidrr export trt`")
    return folder


def _import_stack():
    """(tensorrt, torch) or BackendUnavailable. Methods then `import tensorrt as trt` themselves, so a
    type checker knows every TensorRT call (tests/test_trt_api.py checks them against tensorrt-stubs)."""
    try:
        trt = import_tensorrt()
    except BackendUnavailable as exc:
        raise BackendUnavailable(f"backend 'trt' needs tensorrt: {exc}; use backend='ort' elsewhere") from exc
    try:
        import torch
    except ImportError as exc:
        raise BackendUnavailable("backend 'trt' uses torch's CUDA allocator for device buffers; "
                                 "pip install torch (CUDA build)") from exc
    if not torch.cuda.is_available():
        raise BackendUnavailable("backend 'trt' needs a CUDA GPU; torch sees none here")
    return trt, torch


class TrtRunner(Runner):
    name = "trt"

    def __init__(self, bundle: Bundle, threads: int = 0, engine_key: str | None = None):
        super().__init__(bundle, threads)
        _, torch = _import_stack()
        import tensorrt as trt
        folder = engine_folder(bundle, engine_key)
        self.torch = torch
        self.logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self.logger)
        self.engines: dict[str, trt.ICudaEngine] = {}
        for graph in GRAPHS:
            with open(os.path.join(folder, graph + ".plan"), "rb") as fh:
                engine = runtime.deserialize_cuda_engine(fh.read())
            if engine is None:
                raise BundleError(f"engine {folder}/{graph}.plan was built by another TensorRT version or GPU; "
                                  f"rebuild it with `kidrr export trt`")
            self.engines[graph] = engine
        self.folder = folder

    def _run(self, graph: str, feeds: dict) -> dict:
        """One execution context per call: contexts are not thread-safe, engines are."""
        import tensorrt as trt
        torch = self.torch
        engine = self.engines[graph]
        context = engine.create_execution_context()
        keep, outputs = [], []
        for name, array in feeds.items():
            t = torch.from_numpy(array).cuda()
            keep.append(t)
            context.set_input_shape(name, tuple(array.shape))
            context.set_tensor_address(name, t.data_ptr())
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) != trt.TensorIOMode.OUTPUT:
                continue
            shape = context.get_tensor_shape(name)[:]   # Dims slices to a tuple (the stubs know it; tuple(Dims) they do not)
            dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(engine.get_tensor_dtype(name)))).dtype
            out = torch.empty(shape, dtype=dtype, device="cuda")
            context.set_tensor_address(name, out.data_ptr())
            outputs.append((name, out))
        stream = torch.cuda.current_stream()
        if not context.execute_async_v3(stream.cuda_stream):
            raise BackendUnavailable(f"TensorRT failed to run {graph}; see the TensorRT log above")
        stream.synchronize()
        return {name: out.float().cpu().numpy() for name, out in outputs}

    def encode_images(self, features):
        out = self._run("image_encoder", {"features": as_float32(features)})
        return out["img_locals"], out["img_global"]

    def encode_texts(self, ids, lengths):
        out = self._run("text_encoder", {"ids": as_int64(ids), "lengths": as_int64(lengths)})
        return out["cap_locals"], out["cap_global"]

    def score(self, img_locals, img_global, cap_locals, cap_global, cap_lengths):
        return self._run("similarity", {
            "img_locals": as_float32(img_locals), "img_global": as_float32(img_global),
            "cap_locals": as_float32(cap_locals), "cap_global": as_float32(cap_global),
            "cap_lengths": as_int64(cap_lengths)})["scores"]
