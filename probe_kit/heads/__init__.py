"""Multi-exit heads: one ``ExitHead`` interface and ``HEAD_TYPES`` registry, one ``PolicySpec`` registry
(``POLICIES``), one trainer (``heads/training.py``), one evaluation pipeline (``heads/pipeline.py``)."""

from probe_kit.heads.interface import ExitHead, ExitLoss, TrainingTargets
from probe_kit.heads.policies import FittedPolicy, PolicyInputs, PolicySpec
from probe_kit.heads.policy_registry import POLICIES, register_policy
from probe_kit.heads.registry import HEAD_TYPES, register_head_type

__all__ = [
    "HEAD_TYPES",
    "POLICIES",
    "ExitHead",
    "ExitLoss",
    "FittedPolicy",
    "PolicyInputs",
    "PolicySpec",
    "TrainingTargets",
    "register_head_type",
    "register_policy",
]
