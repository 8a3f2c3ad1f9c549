"""The default backend: ONNX Runtime (CPU here; CUDA / TensorRT execution providers when present)."""
from __future__ import annotations

import numpy as np

from kidrr.errors import BackendUnavailable, BundleError, InputError

from . import kernels as kernel_choice
from .bundle import Bundle, check_graph_io
from .runner import Runner, as_float32, as_int64

# Preferred order when onnxruntime-gpu is installed; CPU is always the fallback.
INPUTS = {"image_encoder": ("features",), "text_encoder": ("ids", "lengths"),
          "similarity": ("img_locals", "img_global", "cap_locals", "cap_global", "cap_lengths")}
ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
              "tensor(int32)": "int32", "tensor(bool)": "bool", "tensor(double)": "float64", "tensor(uint8)": "uint8"}
PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendUnavailable(f"backend 'ort' needs the onnxruntime package ({exc}); "
                                 f"pip install onnxruntime (or onnxruntime-gpu)") from exc
    return ort


class OrtRunner(Runner):
    name = "ort"

    def __init__(self, bundle: Bundle, threads: int = 0, providers=None, spin: bool = False, kernels: str = "auto"):
        super().__init__(bundle, threads)
        ort = _import_ort()
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in PROVIDER_ORDER if p in available]
        missing = [p for p in providers if p not in available]
        if missing:
            raise BackendUnavailable(f"onnxruntime here has no {missing} (available: {available}); "
                                     f"install onnxruntime-gpu or pick other providers")
        if not isinstance(spin, bool):
            raise InputError(f"spin must be True or False, got {spin!r}")
        self.providers = list(providers)
        opts = self._options(ort, threads, spin)
        self.sessions = {}
        for graph in ("image_encoder", "text_encoder"):
            self.sessions[graph] = self._session(ort, bundle, graph, opts)
        self.sessions["similarity"] = self._similarity_session(ort, bundle, threads, spin, kernels, opts)
        if bundle.takes_pixels:
            self.sessions["backbone"] = self._session(ort, bundle, "backbone", opts)
        self._outputs = {g: [o.name for o in s.get_outputs()] for g, s in self.sessions.items()}
        self._inputs = {g: [i.name for i in s.get_inputs()] for g, s in self.sessions.items()}

        expected = dict(INPUTS, **({"backbone": ("images",)} if bundle.takes_pixels else {}))
        for graph, names in expected.items():
            if sorted(self._inputs[graph]) != sorted(names):
                raise BundleError(f"bundle file {bundle.graph(graph)['file']} has inputs {self._inputs[graph]}, "
                                  f"the contract (docs/bundle.md) says {list(names)}; re-export the bundle")
            check_graph_io(bundle, graph, [(i.name, ORT_DTYPES.get(i.type, i.type), i.shape)
                                           for i in self.sessions[graph].get_inputs()])

    @staticmethod
    def _options(ort, threads, spin):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads  # 0: onnxruntime's default (one per core)
        opts.inter_op_num_threads = 1        # the graphs are chains; parallel branches only add contention
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        # Idle workers sleep rather than busy-wait for the next run (onnxruntime spins by default): on a
        # few cores a spinning worker holds the core that the gallery's first stage, the row reads and
        # the next graph need. docs/runtime.md has the measurement; spin=True restores the default.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        return opts

    def _similarity_session(self, ort, bundle, threads, spin, kernels, opts):
        """With the fused kernels registered when chosen (runtime/kernels.py), else the function bodies.
        Only this session gets them: the encoders' kidrr ops (DisseminationStep) have no kernel."""
        try:
            path, required, why = kernel_choice.choose(kernels, bundle.graph("similarity").get("precision", "fp32"))
        except ValueError as exc:
            raise InputError(str(exc)) from None
        self.kernels = f"{kernel_choice.BODIES} ({why})"
        if path is not None and "CPUExecutionProvider" == self.providers[0]:
            fused = self._options(ort, threads, spin)
            try:
                fused.register_custom_ops_library(path)
                session = ort.InferenceSession(bundle.graph_path("similarity"), sess_options=fused,
                                               providers=self.providers)
            except Exception as exc:  # a library for another ONNX Runtime, another CPU, a broken file
                if required:
                    raise BackendUnavailable(f"the kidrr ops library {path} cannot be used here ({str(exc)[:300]}); "
                                             f"rebuild runtime/cpp against this onnxruntime or pass kernels='auto'") from exc
                kernel_choice.warn_once(path, f"kidrr ops library {path} not used ({str(exc)[:300]}); scoring with "
                                              f"the function bodies (same scores, slower). Rebuild runtime/cpp or set "
                                              f"${kernel_choice.ENV}=off to silence this")
                self.kernels = f"{kernel_choice.BODIES} ({path} failed to load)"
            else:
                self.kernels = f"fused ({path})"
                return session
        elif path is not None:
            self.kernels = f"{kernel_choice.BODIES} (the fused kernels are CPU kernels; {self.providers[0]} runs first)"
        return self._session(ort, bundle, "similarity", opts)

    def _session(self, ort, bundle, graph, opts):
        try:
            return ort.InferenceSession(bundle.graph_path(graph), sess_options=opts, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own unexported exception types
            raise BundleError(f"bundle file {bundle.graph(graph)['file']} cannot be loaded by "
                              f"onnxruntime ({str(exc)[:300]}); re-export the bundle") from exc

    def _run(self, graph: str, feeds: dict):
        # session.run is thread-safe in onnxruntime; numpy inputs that are already contiguous
        # float32/int64 are read in place, without a copy.
        return self.sessions[graph].run(self._outputs[graph], feeds)

    def encode_images(self, features):
        locs, glob = self._run("image_encoder", {"features": as_float32(features)})
        return locs, glob

    def extract_features(self, images):
        if "backbone" not in self.sessions:
            raise BundleError(f"bundle {self.bundle.path} has no image backbone: it takes region features, not "
                              f"pixels; export a checkpoint trained on kidrr features output")
        (features,) = self._run("backbone", {"images": as_float32(images)})
        return features

    def encode_texts(self, ids, lengths):
        locs, glob = self._run("text_encoder", {"ids": as_int64(ids), "lengths": as_int64(lengths)})
        return locs, glob

    def score(self, img_locals, img_global, cap_locals, cap_global, cap_lengths):
        (scores,) = self._run("similarity", {
            "img_locals": as_float32(img_locals), "img_global": as_float32(img_global),
            "cap_locals": as_float32(cap_locals), "cap_global": as_float32(cap_global),
            "cap_lengths": as_int64(cap_lengths)})
        return scores

    def describe(self) -> str:
        fused = "+kidrr_ops" if self.kernels.startswith("fused") else ""
        return f"ort[{','.join(p.replace('ExecutionProvider', '') for p in self.providers)}]{fused}"

    def close(self) -> None:
        self.sessions.clear()
