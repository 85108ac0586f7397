"""Analyzer registry: a decorator, discovery, and one front door (as timm's ``create_model``).

Third-party packages add analyzers through the entry-point group ``probe_kit.analyzers``; each
entry point names a module (or callable) that registers its analyzers on import. A plugin that fails
to import is named in a warning and the others still load.

Roles tell the decision and the report what an analyzer's numbers are, so neither names analyzers
by hand: ``readout`` (a per-layer COCO AP50 of detections read from the det tokens, what an exit head
there can reach: it decides), ``evidence`` (supporting per-layer numbers, cited beside the decision),
``cost`` (per-layer GFLOPs to an exit). ``metrics`` lists the per-layer keys consumers show, headline
first, each with its label; ``chance`` names the per-layer key of the chance level, where one exists.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any

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
ROLES = ("readout", "evidence", "cost")


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
    role: str | None = None  # one of ROLES, or None: not read by the decision or the report's tables
    metrics: tuple[tuple[str, str], ...] = ()  # (per-layer key, label), headline first
    chance: str | None = None  # per-layer key holding the chance level of the headline metric
    reference: bool = False  # a readout that at the final layer *is* the model (the decision's reference there)

    @property
    def metric(self) -> str | None:
        """The headline per-layer metric's key (``AP50`` for a readout)."""
        return self.metrics[0][0] if self.metrics else None

    def meta(self) -> dict[str, Any]:
        """What consumers read, as recorded in ``result.json`` under ``meta``."""
        meta = {"role": self.role, "metrics": [list(m) for m in self.metrics], "chance": self.chance}
        return meta | ({"reference": True} if self.reference else {})

    def option_names(self) -> list[str]:
        """Options ``run`` accepts, from its options dataclass or else its signature."""
        if self.options is not None:
            return [f.name for f in fields(self.options)]
        params = inspect.signature(self.run).parameters
        return [p for p in params if p not in ("cache", "layers", "seed")]


_REGISTRY: dict[str, AnalyzerInfo] = {}
_loaded = False


def register(
    name: str,
    summary: str,
    options: type | None = None,
    *,
    role: str | None = None,
    metrics: dict[str, str] | None = None,
    chance: str | None = None,
    reference: bool = False,
) -> Callable:
    """Decorator: ``@register("lens", "one line", role="readout", metrics={"AP50": "lens AP50"})`` on
    ``def run(cache, layers, seed, **options)``. ``metrics`` maps per-layer keys to labels, headline first;
    a ``readout``'s headline is its COCO AP50 (key ``AP50``), a ``cost``'s is ``gflops_to_exit``. ``reference``:
    a readout whose final-layer value is the model's own (the decision and the report measure exits against it)."""
    if role is not None and role not in ROLES:
        raise ValueError(f"analyzer {name!r}: role {role!r} is not one of {ROLES}")
    metrics = dict(metrics or {})
    if role is not None and not metrics:
        raise ValueError(f"analyzer {name!r}: role {role!r} needs metrics (its headline per-layer key first)")
    required = {"readout": "AP50", "cost": "gflops_to_exit"}.get(role or "")
    if required and next(iter(metrics)) != required:
        raise ValueError(f"analyzer {name!r}: a {role}'s headline metric must be {required!r}")
    if reference and role != "readout":
        raise ValueError(f"analyzer {name!r}: only a readout can be the final layer's reference")

    def wrap(func: Callable[..., AnalyzerResult]) -> Callable[..., AnalyzerResult]:
        if name in _REGISTRY and _REGISTRY[name].run is not func:
            raise ValueError(f"analyzer {name!r} is registered twice")
        _REGISTRY[name] = AnalyzerInfo(name, summary, func, options, role, tuple(metrics.items()), chance, reference)
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
        try:
            entry.load()
        except Exception as err:  # noqa: BLE001 - a broken plugin must not take the others down
            warnings.warn(
                f"analyzer plugin {entry.name!r} ({entry.value}) failed to load and is skipped: "
                f"{type(err).__name__}: {err}",
                stacklevel=2,
            )


def list_analyzers() -> list[AnalyzerInfo]:
    """Every registered analyzer (built-in and from entry points), by name."""
    _load_all()
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def analyzer_meta() -> dict[str, dict[str, Any]]:
    """Every registered analyzer's ``meta()`` by name: what the decision and the report read."""
    return {info.name: info.meta() for info in list_analyzers()}


def get_analyzer(name: str) -> AnalyzerInfo:
    _load_all()
    if name not in _REGISTRY:
        raise ValueError(f"unknown analyzer {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
