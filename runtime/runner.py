"""The one interface every backend implements, and the registry that picks one by name.

A runner executes the bundle's three graphs on numpy arrays and nothing else: tiling, galleries,
tokenisation and search live above it (retriever.py), so every backend gets them for free.
Thread-safety contract: after construction a runner holds no mutable state; its three methods
may be called from many threads at once.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
from abc import ABC, abstractmethod

import numpy as np

from kidrr.errors import BackendUnavailable, InputError
from kidrr.optional import tensorrt_missing

from .bundle import Bundle

BACKENDS = {
    "ort": "kidrr.runtime.ort_runner:OrtRunner",
    "trt": "kidrr.runtime.trt_runner:TrtRunner",
    "torch": "kidrr.runtime.torch_runner:TorchRunner",
}


GRAPH_OF = {"encode_images": "image encoder", "encode_texts": "text encoder", "score": "similarity graph"}


def _first_bad_rows(arrays) -> list:
    rows = set()
    for a in arrays:
        a = np.asarray(a)
        if a.ndim and a.dtype.kind == "f":
            rows.update(np.flatnonzero(~np.isfinite(a.reshape(len(a), -1)).all(axis=1))[:5].tolist())
    return sorted(rows)[:5]


def _checked(method, name: str):
    """Wrap a backend's method: refuse calls after close(), and never hand on NaN/inf outputs.

    Finite input can still overflow inside a graph (features of 3e38 square to inf in a norm), and a
    NaN score sorts anywhere: a silent wrong answer. np.isfinite over the outputs costs one pass over
    memory the call has just written, small beside the graph itself.
    """
    @functools.wraps(method)
    def call(self, *args):
        if self._closed:
            raise InputError(f"the {self.name} runner was closed (close() or a `with` block ended); open the "
                             f"bundle again to keep using it")
        out = method(self, *args)
        outputs = out if isinstance(out, tuple) else (out,)
        if not all(np.isfinite(o).all() for o in outputs if np.asarray(o).dtype.kind == "f"):
            bad_in = _first_bad_rows(args)
            cause = ("its input holds NaN/inf too (rows " + str(bad_in) + ")") if bad_in else (
                "from finite input: values too large for float32 arithmetic inside the model (largest |input| "
                f"{max(float(np.abs(np.asarray(a, dtype=np.float64)).max(initial=0)) for a in args):.3g}); "
                "rescale the features to the range the model was trained on")
            raise InputError(f"backend {self.name}: the {GRAPH_OF[name]} returned NaN/inf for rows "
                             f"{_first_bad_rows(outputs)}, {cause}")
        return out
    return call


class Runner(ABC):
    """load (the constructor) / encode_images / encode_texts / score one tile."""

    name = "abstract"
    _closed = False

    def __init_subclass__(cls, **kw):
        # Every backend's methods get the same output check and closed-state check, here once,
        # so a new backend cannot forget them.
        super().__init_subclass__(**kw)
        for name in GRAPH_OF:
            if name in cls.__dict__ and not getattr(cls.__dict__[name], "__isabstractmethod__", False):
                setattr(cls, name, _checked(cls.__dict__[name], name))
        if "close" in cls.__dict__:
            own_close = cls.__dict__["close"]

            @functools.wraps(own_close)
            def close(self):
                self._closed = True
                own_close(self)
            cls.close = close

    def __init__(self, bundle: Bundle, threads: int = 0):
        if threads < 0:
            raise InputError(f"threads must be >= 0 (0: the backend's default), got {threads}")
        self.bundle = bundle
        self.threads = threads

    @abstractmethod
    def encode_images(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 (n, R, F) -> img_locals (n, R, D), img_global (n, D)."""

    @abstractmethod
    def encode_texts(self, ids: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """int64 (m, L), int64 (m,) -> cap_locals (m, L, D) zero past lengths, cap_global (m, D)."""

    @abstractmethod
    def score(self, img_locals, img_global, cap_locals, cap_global, cap_lengths) -> np.ndarray:
        """One tile: n images x m captions -> float32 scores (n, m)."""

    def extract_features(self, images: np.ndarray) -> np.ndarray:
        """float32 (n, 3, S, S) preprocessed images -> region features (n, R, F): the bundle's backbone."""
        raise BackendUnavailable(f"backend {self.name!r} does not run image backbones; use backend='ort'")

    def describe(self) -> str:
        return self.name

    def close(self) -> None:
        """Release sessions / engines. The runner is unusable afterwards (calls raise InputError)."""
        self._closed = True


def load_runner(backend: str, bundle: Bundle, threads: int = 0, **options) -> Runner:
    """Instantiate a backend by name; BackendUnavailable says why one cannot run here."""
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)}")
    module_name, cls_name = BACKENDS[backend].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "bundle", "threads")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise InputError(f"backend {backend!r} takes no option(s) {unknown}; its options are {accepted}")
    return cls(bundle, threads=threads, **options)


def available_backends() -> dict:
    """backend -> None if it can run here, else the reason it cannot (imports nothing heavy twice)."""
    out = {}
    for name, mod in (("ort", "onnxruntime"), ("torch", "torch")):
        out[name] = None if importlib.util.find_spec(mod) is not None else f"python package {mod!r} is not installed"
    out["trt"] = tensorrt_missing()
    return out


def as_float32(x) -> np.ndarray:
    """C-contiguous float32 view (copy only when needed): what every backend feeds its graphs."""
    return np.ascontiguousarray(x, dtype=np.float32)


def as_int64(x) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.int64)

