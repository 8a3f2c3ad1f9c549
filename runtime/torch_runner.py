"""The reference backend: the PyTorch model itself (optional: torch is imported only here).

Weights come from the checkpoint folder the bundle was exported from, not from the ONNX files, so
this backend checks the exporter against the model: the checkpoint's id (weights + config +
vocabulary, kidrr.identity) must equal the manifest's source_checkpoint_sha256. checkpoint=None means the checkpoint shipped with kidrr.
"""
from __future__ import annotations

import numpy as np

from kidrr.errors import BackendUnavailable, BundleError

from .bundle import Bundle
from .runner import Runner, as_float32, as_int64


class TorchRunner(Runner):
    name = "torch"

    def __init__(self, bundle: Bundle, threads: int = 0, checkpoint: str | None = None, device: str = "cpu"):
        super().__init__(bundle, threads)
        try:
            import torch
            from kidrr.checkpoint import load_checkpoint
        except ImportError as exc:
            raise BackendUnavailable(f"backend 'torch' needs PyTorch ({exc}); pip install torch, "
                                     f"or use backend='ort'") from exc
        self.torch = torch
        if threads:
            torch.set_num_threads(threads)  # process-wide in torch: the last runner created wins
        model, _, sha = load_checkpoint(checkpoint, device=device)
        expected = bundle.manifest.get("source_checkpoint_sha256")
        if expected != sha:
            raise BundleError(f"checkpoint {checkpoint or 'shipped'} (weights + config + vocabulary id {sha[:12]}...) is not the "
                              f"one bundle {bundle.path} was exported from ({str(expected)[:12]}...); pass "
                              f"checkpoint=<the folder given to kidrr export>")
        self.model, self.device = model, device
        self.backbone = None
        if bundle.takes_pixels:
            from kidrr.backbone import load_backbone
            self.backbone = load_backbone(bundle.image["backbone"]).to(device)

    def extract_features(self, images):
        if self.backbone is None:
            raise BundleError(f"bundle {self.bundle.path} has no image backbone: it takes region features, not pixels")
        with self.torch.inference_mode():
            return self.backbone(self._tensor(as_float32(images))).cpu().numpy()

    def _tensor(self, x):
        # Galleries are read-only arrays; torch wants writable memory, so those are copied (reference path).
        return self.torch.from_numpy(x if x.flags.writeable else x.copy()).to(self.device)

    def encode_images(self, features):
        with self.torch.inference_mode():
            locs, glob = self.model.encode_images(self._tensor(as_float32(features)))
        return locs.cpu().numpy(), glob.cpu().numpy()

    def encode_texts(self, ids, lengths):
        with self.torch.inference_mode():
            locs, glob = self.model.encode_texts(self._tensor(as_int64(ids)), self._tensor(as_int64(lengths)))
        return locs.cpu().numpy(), glob.cpu().numpy()

    def score(self, img_locals, img_global, cap_locals, cap_global, cap_lengths):
        with self.torch.inference_mode():
            out = self.model.score(*(self._tensor(as_float32(x)) for x in (img_locals, img_global, cap_locals,
                                                                          cap_global)),
                                   self._tensor(as_int64(cap_lengths)))
        return np.asarray(out.cpu().numpy(), dtype=np.float32)

    def describe(self) -> str:
        return f"torch[{self.device}]"
