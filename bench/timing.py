"""Small timing helpers: interleaved rounds, nearest-rank percentiles, summaries in milliseconds."""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from typing import Any


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list (p in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summary_ms(samples_s: list[float]) -> dict[str, Any]:
    """median / p99 / mean / min in milliseconds, and n."""
    if not samples_s:
        return {"n": 0, "median_ms": None, "p99_ms": None, "mean_ms": None, "min_ms": None}
    s = sorted(samples_s)
    return {
        "n": len(s),
        "median_ms": round(percentile(s, 50) * 1e3, 6),
        "p99_ms": round(percentile(s, 99) * 1e3, 6),
        "mean_ms": round(sum(s) / len(s) * 1e3, 6),
        "min_ms": round(s[0] * 1e3, 6),
    }


def time_calls(fn: Callable[[], Any], n: int) -> list[float]:
    """n timed calls (seconds each)."""
    out: list[float] = []
    clock = time.perf_counter
    for _ in range(n):
        t0 = clock()
        fn()
        out.append(clock() - t0)
    return out


def interleaved(contenders: dict[str, tuple[Callable[[], Any], int]], rounds: int = 10,
                warmup: int = 2) -> dict[str, list[float]]:
    """Time every contender `n` times, split into `rounds` blocks taken in turn, so that a slow
    phase of a shared, noisy machine hits all of them alike (the ratios are what we compare)."""
    for fn, _ in contenders.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    gc.collect()  # once: a full collection per block costs more than the blocks on a large heap
    for r in range(rounds):
        for name, (fn, n) in contenders.items():
            block = n // rounds + (1 if r < n % rounds else 0)
            if block:
                samples[name].extend(time_calls(fn, block))
    return samples


def calibrate(fn: Callable[[], Any], budget_s: float, lo: int, hi: int) -> int:
    """How many calls of `fn` fit in `budget_s` (clamped to lo..hi), from a few trial calls."""
    t0 = time.perf_counter()
    trials = 0
    while trials < 3 or time.perf_counter() - t0 < 0.02:
        fn()
        trials += 1
        if trials >= hi:
            break
    per_call = (time.perf_counter() - t0) / trials
    return max(lo, min(hi, int(budget_s / max(per_call, 1e-9))))
