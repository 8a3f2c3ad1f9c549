"""Parity with the torch reference on the shared parity block: max |delta score| and delta R@K."""
from __future__ import annotations

import os

import numpy as np

RECALL_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")


def compare(result: dict, reference: dict, work_dir: str) -> dict | None:
    """None when either side has no parity block (the reference was skipped or failed)."""
    mine, ref = result.get("parity_block"), (reference or {}).get("parity_block")
    if not mine or not ref:
        return None
    a = np.load(os.path.join(work_dir, mine["scores_file"]), allow_pickle=False)
    b = np.load(os.path.join(work_dir, ref["scores_file"]), allow_pickle=False)
    diff = np.abs(a.astype(np.float64) - b)
    return {"block": f"{mine['images']}x{mine['captions']}",
            "max_abs_delta_score": float(diff.max()), "mean_abs_delta_score": float(diff.mean()),
            "delta_recall": {k: mine["recall"][k] - ref["recall"][k] for k in RECALL_KEYS}}
