"""Latency sampling: repeat a call for a fixed duration after warm-up; percentiles and throughput."""
from __future__ import annotations

import time

import numpy as np

WARMUP_CALLS = 2


def sample(fn, duration: float, min_calls: int = 5, max_calls: int = 10_000) -> list:
    """Seconds per call of fn(), warm-up calls excluded; at least min_calls, until `duration` passes."""
    for _ in range(WARMUP_CALLS):
        fn()
    times = []
    stop = time.perf_counter() + duration
    while len(times) < min_calls or (time.perf_counter() < stop and len(times) < max_calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def summarise(times: list, items_per_call: int) -> dict:
    """p50/p90/p99 in milliseconds and items per second (total items / total measured time)."""
    arr = np.asarray(times, dtype=np.float64)
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {"calls": int(arr.size), "items_per_call": int(items_per_call),
            "p50_ms": 1e3 * p50, "p90_ms": 1e3 * p90, "p99_ms": 1e3 * p99,
            "throughput_per_s": items_per_call * arr.size / arr.sum()}


def timed(fn):
    """(result, seconds) of one call."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start
