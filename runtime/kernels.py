"""Which kernels run the similarity graph's `kidrr` ops: the fused CPU kernels of libkidrr_ops
(runtime/cpp, docs/kernels.md) when that library is found and loads, else ONNX Runtime's inlining of
the ops' function bodies. Both give the same scores (within 1e-5); the fused ones are faster.

`kernels=` of the ort backend (open_bundle(..., kernels=...)):
  "auto"    (default) the library from $KIDRR_OPS_LIBRARY, else the CMake build in this checkout
            (build/cpp/release/libkidrr_ops.so); none found: the function bodies, silently.
  "bodies"  never the library (the parity reference; the benchmark's baseline).
  a path    that library; it must load.
$KIDRR_OPS_LIBRARY=off disables the library for "auto".
"""
from __future__ import annotations

import os
import threading
import warnings

OPS_FILE = "libkidrr_ops.so"
ENV = "KIDRR_OPS_LIBRARY"
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CANDIDATES = (os.path.join(_ROOT, "build", "cpp", "release", OPS_FILE),)
BODIES = "function bodies"


class KernelsUnavailableWarning(UserWarning):
    """The fused kernels library was found but not used; scores come from the function bodies."""


_warned: set = set()
_lock = threading.Lock()


def warn_once(key: str, message: str) -> None:
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(message, KernelsUnavailableWarning, stacklevel=3)


def choose(kernels: str, similarity_precision: str) -> tuple:
    """(library path or None, required: bool, why not when None)."""
    if not isinstance(kernels, str) or not kernels:
        raise ValueError(f"kernels must be 'auto', 'bodies' or a path to {OPS_FILE}, got {kernels!r}")
    if kernels == "bodies":
        return None, False, "kernels='bodies'"
    if similarity_precision != "fp32":
        return None, False, f"the fused kernels serve fp32 similarity graphs; this one is {similarity_precision}"
    if kernels != "auto":
        return kernels, True, ""
    env = os.environ.get(ENV, "")
    if env.lower() in ("off", "0", "none", "bodies"):
        return None, False, f"${ENV}={env}"
    if env:
        return env, False, ""
    for path in DEFAULT_CANDIDATES:
        if os.path.isfile(path):
            return path, False, ""
    return None, False, f"no {OPS_FILE} found (build runtime/cpp, or set ${ENV})"
