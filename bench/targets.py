"""What the bench can run: backend names, the precisions each takes, and why an absent one is skipped.

Torch-free: availability is decided from installed packages and ONNX Runtime's provider list, so
the parent process that drives the ort workers never imports torch.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

from kidrr.errors import InputError
from kidrr.optional import tensorrt_missing

PRECISIONS = ("fp32", "fp16", "int8")
# bench name -> (runtime backend, onnxruntime providers or None, precisions it takes)
BACKENDS = {
    "torch": ("torch", None, ("fp32",)),
    "ort": ("ort", ["CPUExecutionProvider"], PRECISIONS),
    "ort-cuda": ("ort", ["CUDAExecutionProvider", "CPUExecutionProvider"], PRECISIONS),
    "ort-trt": ("ort", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
                ("fp32", "fp16")),
    "trt": ("trt", None, ("fp32", "fp16")),
}
REFERENCE = "torch"
INT8_NOT_TRT = ("TensorRT is benched at fp32 and fp16 only: a static int8 (QDQ) bundle passes the lint for "
                "TensorRT's explicit quantization but no int8 engine was ever built here, and the int8-dynamic "
                "fallback (DynamicQuantizeLinear) is not runnable by TensorRT")


@dataclass(frozen=True)
class Target:
    """One row of the bench: a backend at one precision."""
    name: str                 # bench backend name (BACKENDS key)
    precision: str
    backend: str = field(compare=False)
    providers: tuple | None = field(default=None, compare=False)

    @property
    def label(self) -> str:
        return f"{self.name} {self.precision}"

    @property
    def is_reference(self) -> bool:
        return self.name == REFERENCE


def parse_list(text: str | None, known, what: str) -> list:
    """'a,b' -> ['a', 'b'] (None or 'all': every known value); InputError names an unknown one."""
    if text is None or text.strip() in ("", "all"):
        return list(known)
    items = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in items if x not in known]
    if unknown:
        raise InputError(f"unknown {what} {unknown}; choose from {list(known)} (comma-separated, or 'all')")
    return list(dict.fromkeys(items))


def _ort_providers() -> tuple[list, str | None]:
    if importlib.util.find_spec("onnxruntime") is None:
        return [], "python package 'onnxruntime' is not installed (pip install onnxruntime)"
    import onnxruntime
    return onnxruntime.get_available_providers(), None


def unavailable_reason(name: str) -> str | None:
    """None if backend `name` can be tried here, else why not (what to install)."""
    backend, providers, _ = BACKENDS[name]
    if backend == "torch":
        return None if importlib.util.find_spec("torch") else "python package 'torch' is not installed"
    if backend == "trt":
        return tensorrt_missing()
    available, missing_ort = _ort_providers()
    if missing_ort:
        return missing_ort
    absent = [p for p in providers if p not in available]
    if absent:
        return (f"onnxruntime here has no {', '.join(absent)} (available: {', '.join(available)}); "
                f"install onnxruntime-gpu on an NVIDIA host")
    return None


def plan_targets(backends: list, precisions: list) -> tuple[list, list]:
    """(targets to run, [(label, reason)] skipped). The torch reference always runs at fp32."""
    targets, skipped = [], []
    for name in backends:
        backend, providers, takes = BACKENDS[name]
        wanted = ["fp32"] if name == REFERENCE else precisions
        reason = unavailable_reason(name)
        for precision in wanted:
            label = f"{name} {precision}"
            if precision not in takes:   # never possible: say so before what to install
                skipped.append((label, INT8_NOT_TRT if precision == "int8" else f"{name} takes {list(takes)}"))
            elif reason:
                skipped.append((label, reason))
            else:
                targets.append(Target(name, precision, backend, tuple(providers) if providers else None))
    return targets, skipped
