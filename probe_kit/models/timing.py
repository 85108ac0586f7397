"""Latency as benchmarks measure it: warm-up, interleaved repeats, a fixed thread count, medians with spread.

Each setting is a callable that runs one fixed list of images (batch 1, one call per image). Every
round times every setting once, in a rotated order, so load drift and thermal changes hit all
settings alike. The clock is ``torch.utils.benchmark``'s (``timer``: it synchronises the
accelerator before reading ``timeit.default_timer``), read through ``timeit.Timer`` (garbage
collection off while timing) at the thread count given. ``torch.utils.benchmark.Timer`` itself is
not used: its ``timeit`` runs two untimed warm-up calls before every measurement, which would
triple the cost of interleaved rounds, and ``blocked_autorange`` times one setting for a stretch
before the next, which is exactly what lets drift bias a comparison. One call covers the whole
image list, many milliseconds, so timer overhead is negligible.

A latency is ``{"median_ms", "iqr_ms", "repeats"}`` per image. A speed-up is the ratio of two
medians; its spread is the interquartile range of the per-round ratios (the two were timed in the
same round), and a range containing 1 means "no measurable difference".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Latency:
    """Per-image milliseconds of one setting over ``repeats`` rounds."""

    samples_ms: tuple[float, ...]

    @property
    def median_ms(self) -> float:
        return float(np.median(self.samples_ms))

    @property
    def iqr_ms(self) -> float:
        q1, q3 = np.percentile(self.samples_ms, [25, 75])
        return float(q3 - q1)

    def to_json(self) -> dict:
        return {"median_ms": self.median_ms, "iqr_ms": self.iqr_ms, "repeats": len(self.samples_ms)}


def speedup(baseline: Latency, setting: Latency) -> dict:
    """``baseline`` over ``setting``: ratio of medians, median and IQR of the per-round ratios, whether measurable.

    The ratio of medians is the speed-up; the per-round ratios (both timed in the same round) give its
    spread. With few rounds on a noisy host the two medians can come from different rounds, so the
    ratio of medians may fall outside that IQR: the per-round median is reported beside it.
    """
    ratios = np.asarray(baseline.samples_ms) / np.asarray(setting.samples_ms)
    low, high = (float(v) for v in np.percentile(ratios, [25, 75]))
    return {
        "ratio": baseline.median_ms / setting.median_ms,
        "round_ratio_median": float(np.median(ratios)),
        "round_ratio_iqr": [low, high],
        "measurable": not low <= 1.0 <= high,
    }


def describe_speedup(s: dict) -> str:
    """``1.23x (per-round 1.21, IQR 1.10-1.31)``, or ``no measurable difference (1.02x; per-round ...)`` when that
    IQR holds 1. Callers print it after ``measured: ``."""
    low, high = s["round_ratio_iqr"]
    middle = f"{s['round_ratio_median']:.2f}, " if "round_ratio_median" in s else ""
    spread = f"per-round {middle}IQR {low:.2f}-{high:.2f}"
    if s["measurable"]:
        return f"{s['ratio']:.2f}x ({spread})"
    return f"no measurable difference ({s['ratio']:.2f}x; {spread})"


def interleaved_latency(
    settings: dict[str, Callable[[], object]],
    images: int,
    repeats: int = 15,
    warmup: int = 2,
    threads: int = 1,
    progress: bool = False,
) -> dict[str, Latency]:
    """Per-image latency of each setting (a callable that runs ``images`` images) over ``repeats`` interleaved
    rounds, after ``warmup`` untimed rounds; every setting runs exactly ``warmup + repeats`` times."""
    import timeit

    import torch
    from torch.utils.benchmark.utils.timer import timer
    from tqdm import tqdm

    if repeats < 3 or images < 1:
        raise ValueError(f"latency: expected repeats >= 3 and images >= 1, got {repeats} and {images}")
    names = list(settings)
    timers = {n: timeit.Timer(stmt=settings[n], timer=timer) for n in names}
    samples: dict[str, list[float]] = {n: [] for n in names}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(warmup):
            for name in names:
                settings[name]()
        for r in tqdm(range(repeats), desc="latency", unit="round", disable=not progress):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                samples[name].append(1000 * timers[name].timeit(1) / images)
    finally:
        torch.set_num_threads(previous)
    return {n: Latency(tuple(v)) for n, v in samples.items()}
