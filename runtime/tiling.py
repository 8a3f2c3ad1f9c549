"""Choosing score tiles (images x captions per graph call) from a memory budget and measured cost.

Bigger tiles amortise per-call overhead and make bigger matrix products; past a point they fall
out of cache and cost memory. So: the memory budget caps the pairs per tile (from the tile's
estimated working set), then a short calibration times a few candidate shapes on the caller's
own data and keeps the fastest. The result is cached per (regions, caption-length bucket).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from kidrr.errors import InputError

# Candidate (images, captions) shapes, smallest first; filtered by the budget and the job's size.
CANDIDATES = ((8, 4), (16, 8), (32, 8), (64, 8), (32, 16), (64, 16), (128, 16), (128, 32), (256, 32))
CALIBRATE_MIN_PAIRS = 200_000   # smaller jobs take the budget's largest candidate without timing


def pair_bytes(regions: int, length: int, dim: int, sim: int) -> int:
    """Estimated peak working set of one pair inside the similarity graph (float32).

    Dominated by the attended word contexts and their squared differences (a few L x D arrays per
    pair), then the similarity nodes through the relation steps ((L+3) x S, several live at once),
    the region-word attention (R x L) and the adjacency ((L+3)^2).
    """
    nodes = length + 3
    return 4 * (3 * length * dim + 3 * regions * (length + 2) + 8 * nodes * sim + 3 * nodes * nodes)


@dataclass(frozen=True)
class TilePlan:
    images: int
    captions: int
    pairs_per_s: float = 0.0   # measured, 0 when not calibrated

    @property
    def pairs(self) -> int:
        return self.images * self.captions


def fits(shape, regions, length, dim, sim, budget_bytes) -> bool:
    return shape[0] * shape[1] * pair_bytes(regions, length, dim, sim) <= budget_bytes


class TilePlanner:
    """Thread-safe cache of tile plans for one runner."""

    def __init__(self, dim: int, sim: int, budget_bytes: int, fixed: tuple | None = None):
        if budget_bytes <= 0:
            raise InputError(f"memory budget must be positive, got {budget_bytes} bytes")
        if fixed is not None and (len(fixed) != 2 or min(fixed) < 1):
            raise InputError(f"tiles must be (images, captions) >= 1, got {fixed}")
        self.dim, self.sim, self.budget = dim, sim, budget_bytes
        self.fixed = tuple(int(x) for x in fixed) if fixed else None
        self._plans: dict = {}
        self._lock = threading.Lock()

    def candidates(self, regions: int, length: int, n: int, m: int) -> list:
        shapes = [c for c in CANDIDATES if fits(c, regions, length, self.dim, self.sim, self.budget)]
        if not shapes:  # even the smallest does not fit: one pair at a time is the floor
            per = pair_bytes(regions, length, self.dim, self.sim)
            shapes = [(max(1, min(8, self.budget // per)), 1)]
        # A tile larger than the job wastes nothing but hides the real shape: clip, then dedupe.
        clipped = sorted({(min(a, n), min(b, m)) for a, b in shapes}, key=lambda s: (s[0] * s[1], s))
        return clipped

    def plan(self, regions: int, length: int, n: int, m: int, measure=None, force: bool = False) -> TilePlan:
        """measure(shape) -> seconds for one call of that shape; None: no calibration.
        force: calibrate even a small job (and replace a cached plan)."""
        if self.fixed:
            return TilePlan(*self.fixed)
        bucket = (regions, -(-length // 8) * 8)
        with self._lock:
            cached = self._plans.get(bucket)
        if cached is not None and not force:
            return cached
        shapes = self.candidates(regions, bucket[1], n, m)
        if measure is None or len(shapes) == 1 or (n * m < CALIBRATE_MIN_PAIRS and not force):
            return TilePlan(*shapes[-1])  # not cached: a later large job still calibrates
        best = None
        for shape in shapes[-4:]:  # the largest few: small tiles never win by much and cost time to try
            measure(shape)  # warm-up: first call of a shape allocates
            seconds = min(measure(shape) for _ in range(2))
            rate = shape[0] * shape[1] / max(seconds, 1e-9)
            if best is None or rate > best.pairs_per_s:
                best = TilePlan(shape[0], shape[1], rate)
        with self._lock:
            if force:
                self._plans[bucket] = best
            else:
                best = self._plans.setdefault(bucket, best)
        return best


def timer(fn):
    """Seconds one call of fn() takes (perf_counter)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def score_all(runner, img_locals, img_global, captions, plan_for, out=None, progress=None) -> np.ndarray:
    """(n, m) scores of every image against every caption of a CaptionIndex, in original caption order.

    Captions are in length order, so each caption tile is cut to its own longest caption. Image
    tiles are contiguous slices of the gallery (views, no copy).
    """
    n, m = len(img_global), len(captions)
    if out is None:
        out = np.empty((n, m), dtype=np.float32)
    j = 0
    while j < m:
        plan = plan_for(int(captions.lengths[min(m - 1, j + 31)]), n, m - j)
        stop = min(m, j + plan.captions)
        lens = captions.lengths[j:stop]
        cap_locals = captions.padded_locals(j, stop)
        cap_global = captions.globals[j:stop]
        cols = captions.order[j:stop]
        for i in range(0, n, plan.images):
            block = runner.score(img_locals[i:i + plan.images], img_global[i:i + plan.images],
                                 cap_locals, cap_global, lens)
            out[i:i + plan.images, cols] = block
            if progress is not None:
                progress.update(block.size)
        j = stop
    return out
