"""Latency as benchmarks measure it: warm-up, interleaved repeats, a fixed thread count, medians with spread.

Each setting is a callable that runs one fixed list of images (batch 1, one call per image). Every
round times every setting once (in an order shuffled per round, below), so load drift and thermal changes hit all
settings alike. The clock is ``torch.utils.benchmark``'s (``timer``: it synchronises the
accelerator before reading ``timeit.default_timer``), read through ``timeit.Timer`` (garbage
collection off while timing) at the thread count given. ``torch.utils.benchmark.Timer`` itself is
not used: its ``timeit`` runs two untimed warm-up calls before every measurement, which would
triple the cost of interleaved rounds, and ``blocked_autorange`` times one setting for a stretch
before the next, which is exactly what lets drift bias a comparison. One call covers the whole
image list, many milliseconds, so timer overhead is negligible.

Every round times every setting once, in an order shuffled per round from a seed (a fixed order
would let a burst of load land on the same setting's turn round after round). Rounds continue past
``repeats`` until every speed-up's confidence interval is narrow enough (``Rounds``) or a cap on rounds
or seconds is reached; which one stopped it is recorded, with the conditions of the run (CPU or GPU,
threads, load average before and after: ``conditions``).

A latency is ``{"median_ms", "iqr_ms", "repeats"}`` per image. A speed-up is the ratio of two
medians; its spread is the interquartile range of the per-round ratios (the two were timed in the
same round), and a range containing 1 means "no measurable difference". Its 95% confidence interval
is a seeded bootstrap over rounds (rounds resampled in pairs, so both sides of each ratio stay in
their round): the same samples and seed give the same interval.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 2000


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
        "ci95": bootstrap_ci(baseline, setting),
        "rounds": len(ratios),
        "measurable": not low <= 1.0 <= high,
    }


def bootstrap_ci(baseline: Latency, setting: Latency, seed: int = 0, level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval of the ratio of medians ``baseline / setting`` over rounds.

    Rounds are resampled with replacement as pairs (both settings were timed in the same round), from
    ``seed``: the same samples give the same interval.
    """
    a, b = np.asarray(baseline.samples_ms), np.asarray(setting.samples_ms)
    if a.shape != b.shape or len(a) < 2:
        raise ValueError(f"bootstrap: expected paired rounds, got {len(a)} and {len(b)}")
    picks = np.random.default_rng(seed).integers(0, len(a), size=(BOOTSTRAP_RESAMPLES, len(a)))
    ratios = np.median(a[picks], axis=1) / np.median(b[picks], axis=1)
    tail = (1 - level) / 2 * 100
    return [float(v) for v in np.percentile(ratios, [tail, 100 - tail])]


@dataclass(frozen=True)
class Rounds:
    """How many timing rounds: at least ``minimum``; more, up to ``maximum`` rounds and ``seconds`` of timing,
    while some setting's speed-up interval against ``baseline`` is wider than ``width`` (relative to its ratio)."""

    minimum: int = 11
    maximum: int = 11
    seconds: float = 120.0
    width: float = 0.10
    seed: int = 0

    def done(self, samples: dict[str, list[float]], baseline: str | None, elapsed: float) -> str | None:
        """Why timing may stop now (None: go on)."""
        rounds = len(next(iter(samples.values())))
        if rounds < self.minimum:
            return None
        if baseline is None or len(samples) == 1:
            return "minimum rounds"
        widest = max(_relative_width(samples[baseline], v) for k, v in samples.items() if k != baseline)
        if widest <= self.width:
            return f"intervals narrow enough (widest 95% interval {widest:.0%} of its ratio, bar {self.width:.0%})"
        if rounds >= self.maximum:
            return f"round cap ({self.maximum}; widest 95% interval {widest:.0%} of its ratio)"
        if elapsed >= self.seconds:
            return f"time cap ({self.seconds:.0f} s; widest 95% interval {widest:.0%} of its ratio)"
        return None


def _relative_width(baseline: list[float], setting: list[float]) -> float:
    low, high = bootstrap_ci(Latency(tuple(baseline)), Latency(tuple(setting)))
    return (high - low) / (float(np.median(baseline)) / float(np.median(setting)))


def conditions(threads: int, device: str = "cpu") -> dict:
    """What a timing ran on: the processor (or GPU), the thread count and the load average now."""
    info = {"device": device, "cpu": _cpu_name(), "cores": os.cpu_count(), "threads": threads, "load": _load()}
    if device.startswith("cuda"):
        import torch

        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def describe_conditions(timing: dict, why_stopped: bool = True) -> str | None:
    """``timed on AMD EPYC, 1 thread(s), 17 interleaved rounds (time cap ...); load average 1.6 before, 1.2 after,
    on 2 cores`` from a result's recorded ``timing`` (None where the conditions were not recorded);
    ``why_stopped``: with the reason the rounds stopped (in brackets)."""
    if "rounds" not in timing:
        return None
    where = timing.get("gpu") or timing.get("cpu") or "an unrecorded processor"
    stopped = f" ({timing.get('stopped')})" if why_stopped else ""
    return (
        f"timed on {where}, {timing.get('threads')} thread(s), {timing['rounds']} interleaved rounds{stopped}; "
        f"load average {_first(timing.get('load_before'))} before, {_first(timing.get('load_after'))} after, on "
        f"{timing.get('cores')} cores"
    )


def busy_load(timing: dict) -> float | None:
    """The highest 1-minute load average recorded around a timing when it exceeded the cores (a busy machine),
    else None."""
    loads = [v[0] for v in (timing.get("load_before"), timing.get("load_after")) if v]
    cores = timing.get("cores") or 0
    return max(loads) if loads and cores and max(loads) > cores else None


def _first(values: list[float] | None) -> str:
    return f"{values[0]:.1f}" if values else "unknown"


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):  # noqa: SIM115 (read once, closed at exit)
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def describe_speedup(s: dict) -> str:
    """``1.23x (per-round 1.21, IQR 1.10-1.31)``, or ``no measurable difference (1.02x; per-round ...)`` when that
    IQR holds 1. Callers print it after ``measured: ``."""
    low, high = s["round_ratio_iqr"]
    middle = f"{s['round_ratio_median']:.2f}, " if "round_ratio_median" in s else ""
    spread = f"per-round {middle}IQR {low:.2f}-{high:.2f}"
    if s["measurable"]:
        return f"{s['ratio']:.2f}x ({spread})"
    return f"no measurable difference ({s['ratio']:.2f}x; {spread})"


@dataclass(frozen=True)
class TimedRun:
    """Latencies of every setting, and how the run went: rounds, why it stopped, the machine's conditions."""

    latency: dict[str, Latency]
    rounds: int
    stopped: str
    conditions: dict

    def to_json(self) -> dict:
        return {"rounds": self.rounds, "stopped": self.stopped, **self.conditions}


def interleaved_latency(
    settings: dict[str, Callable[[], object]],
    images: int,
    rounds: Rounds | int = 15,
    warmup: int = 2,
    threads: int = 1,
    progress: bool = False,
    baseline: str | None = "full",
    device: str = "cpu",
) -> TimedRun:
    """Per-image latency of each setting (a callable that runs ``images`` images) over interleaved rounds in a
    seeded shuffled order, after ``warmup`` untimed rounds; ``rounds`` as ``Rounds`` (an int: exactly that many)."""
    import timeit

    import torch
    from torch.utils.benchmark.utils.timer import timer

    from probe_kit.console import progress_bar

    rounds = rounds if isinstance(rounds, Rounds) else Rounds(minimum=rounds, maximum=rounds)
    if rounds.minimum < 3 or images < 1:
        raise ValueError(f"latency: expected repeats >= 3 and images >= 1, got {rounds.minimum} and {images}")
    names = list(settings)
    timers = {n: timeit.Timer(stmt=settings[n], timer=timer) for n in names}
    samples: dict[str, list[float]] = {n: [] for n in names}
    order, before = np.random.default_rng(rounds.seed), conditions(threads, device)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(warmup):
            for name in names:
                settings[name]()
        start, stopped = time.monotonic(), None
        with progress_bar(desc="latency", unit="round", show=progress) as bar:
            while stopped is None:
                for i in order.permutation(len(names)):
                    samples[names[i]].append(1000 * timers[names[i]].timeit(1) / images)
                bar.update(1)
                stopped = rounds.done(samples, baseline if baseline in samples else None, time.monotonic() - start)
    finally:
        torch.set_num_threads(previous)
    load = before.pop("load")
    ran = {**before, "load_before": load, "load_after": _load()}
    return TimedRun({n: Latency(tuple(v)) for n, v in samples.items()}, len(samples[names[0]]), stopped, ran)
