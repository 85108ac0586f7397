"""``POLICIES``: exit policies by name. ``evaluate-exits --policy/--policies``, the design comparison, the
YAML ``exits: designs: policies`` and the report read them here; the four built-ins are registered
below with the same ``register_policy`` a plug-in calls (docs/exit-policies.md)."""

from __future__ import annotations

from probe_kit.heads.gate import gate_gflops, train_gates
from probe_kit.heads.oracle import oracle_policy
from probe_kit.heads.policies import (
    FittedPolicy,
    PolicyInputs,
    PolicySpec,
    confidence_rule,
    online,
    online_policy,
    patience_rule,
)

POLICIES: dict[str, PolicySpec] = {}


def register_policy(spec: PolicySpec, replace: bool = False) -> PolicySpec:
    """Add ``spec`` under its name; a name already taken is refused unless ``replace``."""
    if not isinstance(spec, PolicySpec):
        raise TypeError(f"register_policy: expected a PolicySpec, got {spec!r}")
    if not spec.name.isidentifier():
        raise ValueError(f"policy name: expected an identifier-like string, got {spec.name!r}")
    if not spec.thresholds or not all(0 <= t <= 1 for t in spec.thresholds):
        raise ValueError(f"policy {spec.name!r}: thresholds: expected numbers in [0, 1], got {spec.thresholds!r}")
    if spec.name in POLICIES and POLICIES[spec.name] != spec and not replace:
        raise ValueError(f"exit policy {spec.name!r} is already registered")
    POLICIES[spec.name] = spec
    return spec


def policy_spec(name: str, where: str = "--policy") -> PolicySpec:
    """The registered policy ``name``, or a one-line refusal naming ``where`` and the choices."""
    if name not in POLICIES:
        raise ValueError(f"{where}: expected one of {', '.join(POLICIES)}, got {name!r}")
    return POLICIES[name]


def _fit_learned(inputs: PolicyInputs) -> FittedPolicy:
    gates, summary = train_gates(inputs.training, inputs.target_f1, inputs.seed)
    return FittedPolicy(online_policy(gates.rule()), gates.rule(), {"training": summary, "target_f1": inputs.target_f1})


def _fit_oracle(inputs: PolicyInputs) -> FittedPolicy:
    return FittedPolicy(oracle_policy)


for _spec in (
    PolicySpec(
        "confidence",
        (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99),
        online(confidence_rule),
        "leave when no detection slot is undecided (every person probability <= 1 - t or >= t)",
    ),
    PolicySpec(
        "patience",
        (0.3, 0.5, 0.7, 0.8, 0.9, 0.95),
        online(patience_rule),
        "leave when this exit's kept detections match the previous exit's (IoU >= t)",
    ),
    PolicySpec(
        "learned",
        (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99),
        _fit_learned,
        "a logistic gate per exit, trained on the heads' training images, leaves at probability >= t",
        fitted=True,
        cost=gate_gflops,
    ),
    PolicySpec(
        "oracle",
        (0.5, 0.7, 0.8, 0.9, 0.95, 1.0),
        _fit_oracle,
        "each image at the earliest exit whose kept detections reach F1 >= t against the final layer's",
        bound=True,
    ),
):
    register_policy(_spec)
