"""export_bundle: checkpoint -> bundle folder (docs/bundle.md), staged and moved into place atomically."""
from __future__ import annotations

import errno
import json
import os
import sys
import time

import numpy as np
import onnx
import onnxruntime
import torch
from tqdm import tqdm

from .. import __version__
from ..checkpoint import load_checkpoint
from ..config import dump_json
from ..errors import BundleError, InputError
from ..fileio import foreign_entries, replace_dir_atomic, sha256_file, staging_dir
from ..tokenizer import TOKENIZER_RULES
from . import graphs, manifest as mf, recall, verify
from .ort_session import session

MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 18, 20, 18   # 18: LayerNormalization, Reduce* axes as inputs; 20: TensorRT 10.0's max
PRECISIONS = ("fp32", "fp16", "int8")


def check_opset(opset: int | None) -> int:
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise InputError(f"opset {opset} is outside the supported range {MIN_OPSET}..{MAX_OPSET} "
                         f"(the graphs need >= {MIN_OPSET}; TensorRT 10.0 parses <= {MAX_OPSET})")
    return opset


STAGING_PREFIX = ".tmp-bundle-"
ENGINES = "engines"   # kidrr-export trt writes its engine sets here; they belong to the bundle


def check_replaceable_bundle(folder: str) -> None:
    """BundleError unless folder is empty or holds a kidrr bundle and nothing kidrr did not write there.

    --force replaces a bundle; it must never delete a project folder, `.`, or files a user put
    beside the bundle's own (a saved gallery, notes): those are named and the export refused.
    """
    entries = os.listdir(folder)
    if not entries:
        return
    path = os.path.join(folder, mf.MANIFEST)
    try:
        with open(path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != mf.FORMAT:
        raise BundleError(f"{folder} is not empty and is not a kidrr bundle (no valid {mf.MANIFEST}); --force "
                          f"only replaces a bundle. Choose a new or empty --out folder")
    graphs_ = manifest.get("graphs") if isinstance(manifest.get("graphs"), dict) else {}
    files = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
    known = {mf.MANIFEST, ENGINES, *files}
    known |= {g.get("file") for g in graphs_.values() if isinstance(g, dict) and isinstance(g.get("file"), str)}
    foreign = foreign_entries(folder, known)
    if foreign:
        raise BundleError(f"{folder} holds a bundle but also {foreign[:5]}{' ...' if len(foreign) > 5 else ''}, "
                          f"which kidrr did not write; --force would delete them. Move them out of the "
                          f"folder or choose another --out")


def _check_out_dir(out_dir: str, force: bool) -> str:
    out_dir = os.path.abspath(out_dir)
    if os.path.lexists(out_dir):
        if os.path.islink(out_dir) or not os.path.isdir(out_dir):
            raise BundleError(f"{out_dir} exists and is not a folder; choose another --out")
        if os.listdir(out_dir) and not force:
            raise BundleError(f"{out_dir} already exists and is not empty; pass --force (force=True) to replace it")
        check_replaceable_bundle(out_dir)
    parent = os.path.dirname(out_dir)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise BundleError(f"cannot create the output's parent folder {parent} ({exc.strerror}); choose another --out") from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BundleError(f"the output's parent folder {parent} is not writable; choose another --out")
    return out_dir


def build_graphs(model, opset: int, precision: str) -> dict:
    """name -> (ModelProto, seconds to write it)."""
    out = {}
    for name, make in (("image_encoder", lambda: graphs.image_encoder(model, opset)),
                       ("text_encoder", lambda: graphs.text_encoder(model, opset)),
                       ("similarity", lambda: graphs.similarity(model, opset, graphs.SimilarityOptions(precision)))):
        start = time.perf_counter()
        proto = make()
        onnx.checker.check_model(proto, full_check=True)
        out[name] = (proto, time.perf_counter() - start)
    return out


def _synthetic_dev(model, n_images: int | None):
    """The synthetic dev split if the model reads its feature size, else None."""
    from ..synthetic import SyntheticConfig, make_synthetic
    syn = SyntheticConfig()
    if model.cfg.feature_size != syn.feature_size:
        return None
    split = make_synthetic("dev", syn)
    return split.subset(n_images) if n_images else split


def export_bundle(checkpoint: str | None, out_dir: str, precision: str = "fp32", opset: int | None = None,
                  force: bool = False, verify_outputs: bool = True, verify: bool | None = None,
                  recall_images: int | None = None, progress: bool = True, log=None) -> dict:
    """Write a bundle; returns its manifest. checkpoint None exports the shipped model.

    verify (default on): fp32 graphs must match PyTorch within 1e-5 (VerificationError otherwise);
    fp16/int8 also report their recall delta against fp32 on the synthetic dev set (first
    recall_images images; all if None) and fail past RECALL_TARGETS.
    """
    # Messages go above the progress bar (tqdm.write), never onto its line.
    log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    do_verify = verify_outputs if verify is None else verify
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r} unknown; choose one of {PRECISIONS}")
    opset = check_opset(opset)
    out_dir = _check_out_dir(out_dir, force)
    stages = ["load checkpoint", "write graphs", "verify", "manifest"]
    bar = tqdm(stages, desc="kidrr-export", disable=not progress, leave=False)
    try:
        bar.set_postfix_str("load checkpoint")
        model, vocab, ckpt_sha = load_checkpoint(checkpoint)
        bar.update(1)
        with staging_dir(os.path.dirname(out_dir), STAGING_PREFIX) as staging:
            manifest = _write_bundle(model, vocab, ckpt_sha, staging, out_dir, precision, opset, do_verify,
                                     recall_images, progress, log, bar)
    except OSError as exc:
        # A full disk, a read-only or pseudo file system (/proc): say where and what to do, not a traceback.
        hint = "free some space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "choose another --out"
        raise BundleError(f"could not write the bundle next to {out_dir} ({exc.strerror or exc}); {hint}. "
                          f"Nothing was replaced") from exc
    finally:
        bar.close()
    log(f"bundle written to {out_dir} ({precision}, opset {opset})")
    return manifest


def _write_bundle(model, vocab, ckpt_sha, staging, out_dir, precision, opset, do_verify, recall_images, progress,
                  log, bar) -> dict:
    bar.set_postfix_str("write graphs")
    built = build_graphs(model, opset, precision)
    entries, timings = {}, {}
    for name, (proto, seconds) in built.items():
        path = os.path.join(staging, f"{name}.onnx")
        onnx.save(proto, path)
        entries[name] = mf.graph_entry(proto, f"{name}.onnx", path, precision if name == "similarity" else "fp32")
        timings[name] = seconds
        log(f"  wrote {name}.onnx in {seconds:.2f}s ({os.path.getsize(path) / 1e6:.1f} MB)")
    vocab.save(os.path.join(staging, "vocab.json"))
    bar.update(1)
    bar.set_postfix_str("verify")
    report = _verify(model, vocab, staging, precision, opset, recall_images, progress, log) if do_verify else None
    bar.update(1)
    bar.set_postfix_str("manifest")
    manifest = {
        "format": mf.FORMAT, "model": model.cfg.to_dict(),
        "tokenizer": {"rules": TOKENIZER_RULES, "vocab": "vocab.json", "max_caption_len": model.cfg.max_caption_len},
        "precision": precision, "graphs": entries,
        "files": {"vocab.json": sha256_file(os.path.join(staging, "vocab.json"))},
        "source_checkpoint_sha256": ckpt_sha,
        "exporter": {"kidrr": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__},
        "export_seconds": {k: round(v, 3) for k, v in timings.items()},
        "verification": report,
    }
    with open(os.path.join(staging, mf.MANIFEST), "w") as fh:
        fh.write(dump_json(manifest))
        fh.flush()
        os.fsync(fh.fileno())
    replace_dir_atomic(staging, out_dir, check_replaceable_bundle)
    bar.update(1)
    return manifest


def _verify(model, vocab, folder, precision, opset, recall_images, progress, log) -> dict:
    sessions = {g: session(os.path.join(folder, f"{g}.onnx")) for g in mf.GRAPHS}
    report = verify.parity(model, sessions)
    for name, diff in report["max_abs_diff"].items():
        log(f"  max |torch - onnxruntime| {name:28s} {diff:.3g}")
    log("  rank agreement " + ", ".join(f"{k} {v:.3f}" for k, v in report["rank_agreement"].items()))
    bad = verify.check_parity(report, precision)
    if bad:
        raise verify.VerificationError(f"exported graphs differ from PyTorch beyond {verify.FP32_TOLERANCE}: "
                                       f"{', '.join(bad)}; the bundle was not written")
    if precision != "fp32":
        split = _synthetic_dev(model, recall_images)
        if split is None:
            log(f"  recall delta skipped: the model reads {model.cfg.feature_size}-d features, the synthetic set "
                f"has {128}")
            report["recall_delta"] = None
        else:
            reference = dict(sessions, similarity=session(graphs.similarity(model, opset)))
            rd = recall.recall_delta(sessions, reference, vocab, split, model.cfg.max_caption_len, progress)
            report["recall_delta"] = {"split": f"synthetic dev, {len(split.images)} images", **rd}
            delta = rd["delta"]["rsum"]
            log(f"  rSum fp32 {rd['reference']['rsum']:.2f} -> {precision} {rd['variant']['rsum']:.2f} "
                f"(delta {delta:+.2f}, target |delta| <= {verify.RECALL_TARGETS[precision]})")
            if abs(delta) > verify.RECALL_TARGETS[precision]:
                raise verify.VerificationError(
                    f"{precision} similarity graph loses {delta:+.2f} rSum against fp32 on the synthetic dev set "
                    f"(target |delta| <= {verify.RECALL_TARGETS[precision]}); the bundle was not written")
    return report
