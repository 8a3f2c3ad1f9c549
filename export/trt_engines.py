"""`kidrr export trt`: TensorRT engines for a bundle, cached under bundle/engines/<key>/.

Everything except `build_engines`'s TensorRT calls is pure Python and tested without TensorRT:
profile parsing, profile shapes per graph input, cache keys. TensorRT 10 and 11 are handled:
11 has no fp16/int8 builder flags (strongly typed networks take precision from the ONNX), so the
network is created strongly typed wherever the flag exists and a weakly typed fp16 build is only
offered on TensorRT 10.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess

from ..errors import BackendUnavailable, BundleError, InputError
from .. import optional
from ..fileio import foreign_entries, replace_dir_atomic, staging_dir, write_atomic
from .lint import lint_bundle
from .manifest import GRAPHS, check_bundle

DEFAULT_SHAPES = "n=1:32:64,m=1:8:64,R=1:36:64,L=1:16:64"
TIMING_CACHE = "timing.cache"


def parse_shapes(text: str | None, max_caption_len: int | None = None) -> dict:
    """'n=1:32:64,m=1:8:64,L=1:16:64' -> {'n': (1, 32, 64), ...}, on top of the defaults."""
    out = {}
    for spec in (DEFAULT_SHAPES + ("," + text if text else "")).split(","):
        spec = spec.strip()
        if not spec:
            continue
        try:
            axis, triple = spec.split("=")
            lo, opt, hi = (int(v) for v in triple.split(":"))
        except ValueError:
            raise InputError(f"shape spec {spec!r} must look like axis=min:opt:max, e.g. n=1:32:64") from None
        if axis not in ("n", "m", "R", "L"):
            raise InputError(f"shape spec {spec!r}: axis must be one of n, m, R, L")
        if not 1 <= lo <= opt <= hi:
            raise InputError(f"shape spec {spec!r}: need 1 <= min <= opt <= max")
        out[axis] = (lo, opt, hi)
    if max_caption_len and out["L"][2] > max_caption_len:
        raise InputError(f"L max {out['L'][2]} exceeds the model's max_caption_len {max_caption_len}")
    return out


def input_profiles(graph_entry: dict, shapes: dict) -> dict:
    """{input name: (min shape, opt shape, max shape)} for one manifest graph entry."""
    out = {}
    for inp in graph_entry["inputs"]:
        dims = [[d] * 3 if isinstance(d, int) else list(shapes[d]) for d in inp["shape"]]
        out[inp["name"]] = tuple(tuple(d[k] for d in dims) for k in range(3))
    return out


def engine_key(onnx_sha256: str, trt_version: str, compute_capability: str, precision: str, profile: dict) -> str:
    """Cache key: any change of graph, TensorRT, GPU generation, precision or profile gives a new engine."""
    blob = json.dumps({"onnx": onnx_sha256, "trt": trt_version, "sm": compute_capability, "precision": precision,
                       "profile": {k: [list(s) for s in v] for k, v in sorted(profile.items())}}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def import_tensorrt():
    """The tensorrt module, or BackendUnavailable (kidrr.optional). Callers then `import tensorrt as trt`
    themselves, so a type checker sees every TensorRT call (tests/test_trt_api.py checks them)."""
    return optional.import_tensorrt()


def compute_capability() -> str:
    """'8.6'-style capability of GPU 0 (nvidia-smi, else torch.cuda); BackendUnavailable without a GPU."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import torch
        if torch.cuda.is_available():
            return "%d.%d" % torch.cuda.get_device_capability(0)
    except ImportError:
        pass
    raise BackendUnavailable("no NVIDIA GPU found (nvidia-smi and torch.cuda see none); TensorRT engines need one")


def trt_major(trt) -> int:
    return int(trt.__version__.split(".")[0])


def plan_precision(bundle_precision: str, requested: str | None, major: int, quantization: str | None = None) -> tuple:
    """(precision of the engine, use the weakly typed fp16 builder flag?). quantization: the int8
    similarity graph's ("static-qdq": TensorRT takes it strongly typed; else dynamic, refused)."""
    requested = requested or bundle_precision
    if bundle_precision == "int8" and requested == "int8" and quantization == "static-qdq":
        return "int8", False
    if requested == "int8" or bundle_precision == "int8":
        raise InputError("int8 TensorRT engines need a QDQ-quantized graph; this bundle's int8 uses ONNX Runtime's "
                         "dynamic quantization. Export with `kidrr export onnx --precision int8` (static QDQ), "
                         "or build from an fp32 or fp16 bundle")
    if requested == bundle_precision:
        return requested, False
    if requested == "fp16" and bundle_precision == "fp32" and major < 11:
        return "fp16", True
    raise InputError(f"TensorRT {major} takes precision from the ONNX (strongly typed): export a {requested} bundle "
                     f"(`kidrr export onnx --precision {requested}`) instead of asking for --precision {requested} "
                     f"on a {bundle_precision} bundle")


def build_engines(bundle: str, precision: str | None = None, shapes: str | None = None, workspace_mb: int = 2048,
                  log=print) -> dict:
    """Build (or reuse from the cache) one engine per graph; returns {graph: plan path}."""
    manifest = check_bundle(bundle)
    problems = [p for ps in lint_bundle(bundle).values() for p in ps]
    if problems:
        raise BundleError("the bundle does not pass `kidrr export lint`: " + "; ".join(problems))
    import_tensorrt()
    import tensorrt as trt
    major = trt_major(trt)
    engine_precision, fp16_flag = plan_precision(manifest["precision"], precision, major,
                                                 manifest["graphs"]["similarity"].get("quantization"))
    prof_shapes = parse_shapes(shapes, manifest["model"]["max_caption_len"])
    sm = compute_capability()
    engines_dir = os.path.join(bundle, "engines")
    os.makedirs(engines_dir, exist_ok=True)
    logger = trt.Logger(trt.Logger.WARNING)
    cache_path = os.path.join(engines_dir, TIMING_CACHE)
    # One engine set per key, holding the three plans: the runtime's trt backend loads a set.
    profiles = {graph: input_profiles(entry, prof_shapes) for graph, entry in manifest["graphs"].items()
                if graph in GRAPHS}   # the image graphs run on ONNX Runtime
    key = engine_key("+".join(manifest["graphs"][g]["sha256"] for g in sorted(profiles)), trt.__version__, sm,
                     engine_precision, {f"{g}.{name}": shape for g in sorted(profiles)
                                        for name, shape in profiles[g].items()})
    final = os.path.join(engines_dir, key)
    plans = {graph: os.path.join(final, f"{graph}.plan") for graph in profiles}
    if all(os.path.exists(p) for p in plans.values()):
        log(f"  cached engine set {key}")
        return plans
    with staging_dir(engines_dir, ".tmp-engine-") as staging:
        meta = {"tensorrt": trt.__version__, "compute_capability": sm, "precision": engine_precision, "graphs": {}}
        for graph, entry in ((g, manifest["graphs"][g]) for g in profiles):
            log(f"  {graph}: building engine (TensorRT {trt.__version__}, sm {sm}, {engine_precision})")
            data = _build_one(major, logger, os.path.join(bundle, entry["file"]), profiles[graph], fp16_flag,
                              workspace_mb, cache_path)
            with open(os.path.join(staging, f"{graph}.plan"), "wb") as fh:
                fh.write(data)
            meta["graphs"][graph] = {"onnx_sha256": entry["sha256"],
                                     "profile": {k: [list(v) for v in s] for k, s in profiles[graph].items()}}
        with open(os.path.join(staging, "engine.json"), "w") as fh:
            json.dump(meta, fh, indent=2)
        replace_dir_atomic(staging, final, _check_replaceable_engines)
    log(f"  engine set {key} written")
    return plans


def _check_replaceable_engines(folder: str) -> None:
    """An engine set folder holds plans and engine.json only; anything else is not ours to delete."""
    foreign = [e for e in foreign_entries(folder, ["engine.json"]) if not e.endswith(".plan")]
    if foreign:
        raise BundleError(f"engine folder {folder} holds {foreign[:5]}, which kidrr did not write; move them out "
                          f"before rebuilding")


def _build_one(major, logger, onnx_path, profile, fp16_flag, workspace_mb, cache_path) -> bytes:
    import tensorrt as trt
    builder = trt.Builder(logger)
    flags = 0
    if not fp16_flag and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(onnx_path):  # from the file, so the model-local functions are read
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BundleError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if fp16_flag:  # TensorRT 10 only (plan_precision refuses it on 11)
        config.set_flag(trt.BuilderFlag.FP16)
    opt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.items():
        opt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(opt_profile)
    cache_bytes = open(cache_path, "rb").read() if os.path.exists(cache_path) else b""
    timing_cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(timing_cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BundleError(f"TensorRT failed to build an engine for {onnx_path}; rerun with a larger --workspace "
                          f"or narrower --shapes")
    write_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)
