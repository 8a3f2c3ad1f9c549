"""Which optional packages are really usable here (torch-free: the runtime asks too).

`import tensorrt` alone proves nothing: the set-up installs `tensorrt-stubs` (TensorRT's API as .pyi
files, for static checks), and a folder of stubs imports as an empty namespace package.
"""
from __future__ import annotations

import importlib.util

TENSORRT_HINT = "the real package installs only on NVIDIA hosts: `pip install kidrr[trt]` (tensorrt>=10)"


def tensorrt_missing() -> str | None:
    """None if the real tensorrt package is importable, else why not."""
    spec = importlib.util.find_spec("tensorrt")
    if spec is None:
        return f"python package 'tensorrt' is not installed; {TENSORRT_HINT}"
    if spec.origin in (None, "namespace"):  # no __init__.py: only type stubs
        return f"only tensorrt's type stubs (tensorrt-stubs) are installed, not TensorRT; {TENSORRT_HINT}"
    return None


def import_tensorrt():
    """The tensorrt module, or BackendUnavailable saying what to install."""
    from kidrr.errors import BackendUnavailable
    missing = tensorrt_missing()
    if missing:
        raise BackendUnavailable(missing)
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailable(f"tensorrt failed to import ({exc}); {TENSORRT_HINT}") from exc
    return tensorrt
