"""Analyzer registry: a decorator, discovery, and one front door (as timm's ``create_model``).

Third-party packages add analyzers through the entry-point group ``probe_kit.analyzers``; each
entry point names a module (or callable) that registers its analyzers on import.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, fields
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, Callable

import numpy as np

ENTRY_POINT_GROUP = "probe_kit.analyzers"
_BUILTIN_MODULES = (
    "probe_kit.analyzers.lens",
    "probe_kit.analyzers.probes",
    "probe_kit.analyzers.dense",
    "probe_kit.analyzers.flops",
    "probe_kit.analyzers.rollout",
    "probe_kit.analyzers.clustering",
    "probe_kit.analyzers.attribution",
)


@dataclass
class AnalyzerResult:
    """What an analyzer found: per-layer metrics plus arrays (embeddings, curves) where useful."""

    name: str
    options: dict[str, Any]
    seed: int
    layers: dict[int, dict[str, Any]]
    cache_fingerprint: str
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "analyzer": self.name,
            "options": self.options,
            "seed": self.seed,
            "cache_fingerprint": self.cache_fingerprint,
            "layers": {str(k): v for k, v in sorted(self.layers.items())},
            **self.extra,
        }


@dataclass(frozen=True)
class AnalyzerInfo:
    name: str
    summary: str
    run: Callable[..., AnalyzerResult]  # run(cache, layers, seed=..., **options)
    options: type | None = None  # dataclass of the options, where ``run`` takes **options

    def option_names(self) -> list[str]:
        """Options ``run`` accepts, from its options dataclass or else its signature."""
        if self.options is not None:
            return [f.name for f in fields(self.options)]
        params = inspect.signature(self.run).parameters
        return [p for p in params if p not in ("cache", "layers", "seed")]


_REGISTRY: dict[str, AnalyzerInfo] = {}
_loaded = False


def register(name: str, summary: str, options: type | None = None) -> Callable:
    """Decorator: ``@register("lens", "one line")`` on ``def run(cache, layers, seed, **options)``."""

    def wrap(func: Callable[..., AnalyzerResult]) -> Callable[..., AnalyzerResult]:
        if name in _REGISTRY and _REGISTRY[name].run is not func:
            raise ValueError(f"analyzer {name!r} is registered twice")
        _REGISTRY[name] = AnalyzerInfo(name, summary, func, options)
        return func

    return wrap


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN_MODULES:
        import_module(module)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        entry.load()


def list_analyzers() -> list[AnalyzerInfo]:
    """Every registered analyzer (built-in and from entry points), by name."""
    _load_all()
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def get_analyzer(name: str) -> AnalyzerInfo:
    _load_all()
    if name not in _REGISTRY:
        raise ValueError(f"unknown analyzer {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
