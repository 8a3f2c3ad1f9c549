"""The one interface every backend implements, and the registry that picks one by name.

A runner executes the bundle's three graphs on numpy arrays and nothing else: tiling, galleries,
tokenisation and search live above it (retriever.py), so every backend gets them for free.
Thread-safety contract: after construction a runner holds no mutable state; its three methods
may be called from many threads at once.
"""
from __future__ import annotations

import importlib
import importlib.util
from abc import ABC, abstractmethod

import numpy as np

from kidrr.errors import BackendUnavailable, InputError

from .bundle import Bundle

BACKENDS = {
    "ort": "kidrr.runtime.ort_runner:OrtRunner",
    "trt": "kidrr.runtime.trt_runner:TrtRunner",
    "torch": "kidrr.runtime.torch_runner:TorchRunner",
}


class Runner(ABC):
    """load (the constructor) / encode_images / encode_texts / score one tile."""

    name = "abstract"

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
        """Release sessions / engines. The runner is unusable afterwards."""


def load_runner(backend: str, bundle: Bundle, threads: int = 0, **options) -> Runner:
    """Instantiate a backend by name; BackendUnavailable says why one cannot run here."""
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)}")
    module_name, cls_name = BACKENDS[backend].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(bundle, threads=threads, **options)


def available_backends() -> dict:
    """backend -> None if it can run here, else the reason it cannot (imports nothing heavy twice)."""
    out = {}
    for name, mod in (("ort", "onnxruntime"), ("trt", "tensorrt"), ("torch", "torch")):
        out[name] = None if importlib.util.find_spec(mod) is not None else f"python package {mod!r} is not installed"
    return out


def as_float32(x) -> np.ndarray:
    """C-contiguous float32 view (copy only when needed): what every backend feeds its graphs."""
    return np.ascontiguousarray(x, dtype=np.float32)


def as_int64(x) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.int64)

