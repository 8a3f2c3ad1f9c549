"""One backend at one precision, in its own process: python -m kidrr.bench.worker SPEC.json RESULT.json

torch and onnxruntime in one process disturb each other's threading, so every target runs alone.
Progress goes to stdout as `PROGRESS <text>` lines (the parent shows them); the result is a JSON
file: {"status": "ok" | "skipped" | "failed", ...}. Score matrices for the parity comparison are
written next to it as .npy files.
"""
from __future__ import annotations

import json
import os
import sys
import traceback

import numpy as np

from kidrr.errors import BackendUnavailable, KidrrError
from kidrr.fileio import write_atomic


def progress(msg: str) -> None:
    print("PROGRESS " + msg, flush=True)


def _open(spec: dict):
    from kidrr.runtime import open_bundle
    options = {}
    if spec["backend"] == "torch":
        options["checkpoint"] = spec["checkpoint"]
    if spec.get("providers"):
        options["providers"] = list(spec["providers"])
    # Evaluation's caption policy (kidrr.evaluate.tokenize_split): over-long captions are cut and
    # all-unknown ones kept, so the bench scores exactly the captions kidrr eval scores.
    return open_bundle(spec["bundle"], backend=spec["backend"], threads=spec["threads"], on_long="truncate",
                       on_unknown="keep", **options)


def parity_block(rt, split, images: int, out_path: str) -> dict:
    """Score the first `images` images against their captions; the matrix goes to out_path."""
    from kidrr import metrics
    from .timing import timed
    sub = split.subset(images)
    progress(f"parity block {len(sub.images)}x{len(sub.captions)}")
    gallery = rt.encode_images(sub.images)
    captions = rt.encode_texts(sub.captions)
    scores, secs = timed(lambda: rt.score(gallery, captions))
    np.save(out_path, scores, allow_pickle=False)
    return {"images": len(sub.images), "captions": len(sub.captions), "score_s": secs,
            "scores_file": os.path.basename(out_path), "recall": metrics.recall(scores, sub.caption_image)}


def run(spec: dict) -> dict:
    from kidrr.data import load_split
    from .latency import INCLUDES, measure_latency
    from .retrieval import full_retrieval, two_stage_sweep
    progress("loading")
    try:
        rt = _open(spec)
    except BackendUnavailable as exc:
        return {"status": "skipped", "reason": str(exc)}
    split = load_split(spec["data_dir"], "test")
    result = {"status": "ok", "runner": rt.runner.describe(), "bundle": spec["bundle"],
              "threads": spec["threads"], "latency_includes": INCLUDES}
    result["latency"] = measure_latency(rt, split, spec["batch_sizes"], spec["duration"], progress)
    result["parity_block"] = parity_block(rt, split, spec["parity_images"], spec["parity_scores"])
    if spec["full"]:
        full, encoded = full_retrieval(rt, split, spec["protocol"], progress)
        result["full"] = full
        result["two_stage"] = two_stage_sweep(rt, encoded, spec["shortlists"], full, progress) \
            if spec["shortlists"] else []
    rt.close()
    return result


def main(argv) -> int:
    spec_path, result_path = argv
    with open(spec_path) as fh:
        spec = json.load(fh)
    code = 0
    try:
        result = run(spec)
    except KidrrError as exc:
        result, code = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}, 3
    except Exception as exc:  # noqa: BLE001 - reported to the parent with its traceback, not swallowed
        traceback.print_exc()
        result, code = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}, 3
    write_atomic(result_path, json.dumps(result, indent=1, default=_jsonable).encode())
    return code


def _jsonable(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
