"""Analyzers: per-layer evidence read from a feature cache. One front door: ``run_analyzer``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from probe_kit.analyzers._registry import (
    ENTRY_POINT_GROUP,
    AnalyzerResult,
    analyzer_meta,
    get_analyzer,
    list_analyzers,
    register,
)

__all__ = [
    "AnalyzerResult",
    "ENTRY_POINT_GROUP",
    "analyzer_meta",
    "get_analyzer",
    "list_analyzers",
    "register",
    "run_analyzer",
    "write_result",
]


def run_analyzer(name: str, cache_path: Path, layers: str, seed: int = 0, **options) -> AnalyzerResult:
    """Run analyzer ``name`` on the ``layers`` selection of a cache (all, lists, ranges, negatives)."""
    from probe_kit.analyzers._options import check_options
    from probe_kit.cache.reader import FeatureCache
    from probe_kit.models.layers import resolve_layers

    info = get_analyzer(name)
    options = check_options(info, options, where=f"analyzer {name}: ")  # before the cache is opened
    with FeatureCache(cache_path) as cache:
        chosen = resolve_layers(layers, cache.depth)
        missing = [layer for layer in chosen if layer not in cache.layers]
        if missing:
            raise ValueError(f"{cache_path}: layers {missing} are not in the cache (cached: {list(cache.layers)})")
        result = info.run(cache, chosen, seed=seed, **options)
        check_result(info, result, chosen)
        result.extra.setdefault("cache", str(Path(cache_path).resolve()))
        result.extra.setdefault("meta", info.meta())  # role + metrics: what the decision and the report read
    return result


def check_result(info, result: AnalyzerResult, layers) -> None:
    """Refuse, naming the analyzer, a result a plug-in could return but the decision must not read: layers not
    asked for, a non-finite metric, or a readout's AP50 outside [0, 1]."""
    import math

    if not isinstance(result, AnalyzerResult) or not isinstance(result.layers, dict):
        raise ValueError(f"analyzer {info.name}: expected an AnalyzerResult with per-layer metrics, got {result!r:.60}")
    extra = sorted(set(result.layers) - set(layers), key=str)
    if extra:
        raise ValueError(f"analyzer {info.name}: returned layers {extra} that were not asked for ({list(layers)})")
    for layer, metrics in result.layers.items():
        for key, value in (metrics or {}).items():
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if number and not math.isfinite(value):
                raise ValueError(f"analyzer {info.name}: layer {layer} {key} = {value}; a metric must be finite")
            in_range = not number or 0 <= value <= 1 or value == -1  # -1: COCO's "no ground truth to score"
            if key in ("AP", "AP50", "AP75") and not in_range and info.role == "readout":
                raise ValueError(f"analyzer {info.name}: layer {layer} {key} = {value}; COCO AP lies in [0, 1]")


def write_result(result: AnalyzerResult, out_dir: Path) -> Path:
    """``out_dir/result.json`` (+ ``arrays.npz`` when the analyzer produced arrays)."""
    from probe_kit.io import write_json

    out_dir = Path(out_dir)
    arrays = out_dir / "arrays.npz"
    if result.arrays:
        out_dir.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(arrays, **result.arrays)
    try:
        return write_json(out_dir / "result.json", result.to_json())
    except BaseException:
        if result.arrays:  # no arrays without the result that explains them
            arrays.unlink(missing_ok=True)
        raise
