"""Multi-exit heads: one ``ExitHead`` interface and ``HEAD_TYPES`` registry, one ``PolicySpec`` registry
(``POLICIES``), one trainer (``heads/training.py``), one evaluation pipeline (``heads/pipeline.py``).

The names below are imported on first use (PEP 562), so torch-free modules such as ``heads.options`` can
be read without importing torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ExitHead": "probe_kit.heads.interface",
    "ExitLoss": "probe_kit.heads.interface",
    "TrainingTargets": "probe_kit.heads.interface",
    "FittedPolicy": "probe_kit.heads.policies",
    "PolicyInputs": "probe_kit.heads.policies",
    "PolicySpec": "probe_kit.heads.policies",
    "POLICIES": "probe_kit.heads.policy_registry",
    "register_policy": "probe_kit.heads.policy_registry",
    "HEAD_TYPES": "probe_kit.heads.registry",
    "register_head_type": "probe_kit.heads.registry",
    "ExitTraining": "probe_kit.heads.options",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'probe_kit.heads' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
