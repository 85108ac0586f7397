"""probe_kit: measure whether the intermediate layers of a YOLOS detector can support detection.

The names below are the Python front door (``probe_kit.api``), loaded on first use (PEP 562) so
``import probe_kit`` and ``probe-kit --help`` do not import torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

__all__ = [
    "analyze",
    "build_report",
    "compare_designs",
    "decide",
    "evaluate_exits",
    "list_analyzers",
    "missing_stages",
    "open_cache",
    "register",
    "run_experiment",
    "train_exits",
    "write_cache",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(import_module("probe_kit.api"), name)
    raise AttributeError(f"module 'probe_kit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
