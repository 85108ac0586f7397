"""Exit policies as pure functions over recorded exit outputs: the plug-in interface.

A **policy** maps recorded outputs and a threshold to an exit layer per image::

    PolicyFn = Callable[[ExitRecords, float], torch.Tensor]   # -> [I] long, each image's exit layer

It must be pure (same records and threshold, same answer) and may read every exit of an image,
the final layer included: an ``oracle`` bound is a PolicyFn. A policy that can also run *live*
(in ``MultiExitYolos``, where later exits do not exist yet) is written as an **online rule**::

    OnlineRule = Callable[[Sequence[ExitStats], float], torch.Tensor]   # -> [b] bool

called at each exit but the last with the ``ExitStats`` of the exits seen so far (oldest first,
rows = the images still running) and answering which images may leave now; it must be row-wise
(row i's answer depends on row i only). ``online_policy(rule)`` turns a rule into the PolicyFn that
makes the same decisions as the live model (tested against it). The last exit always takes the
images that are left. Register plug-ins with ``register_policy(name, policy=...)`` (offline only,
e.g. ``oracle``) or ``register_policy(name, rule=...)`` (online, e.g. a ``learned`` gate over
``ExitStats.pooled`` and the person probabilities, trained elsewhere and closed over).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from probe_kit.heads.records import ExitRecords, ExitStats
from probe_kit.ops.boxes import paired_iou

KEEP_SCORE = 0.5  # a token whose person probability reaches this is a kept detection

PolicyFn = Callable[[ExitRecords, float], torch.Tensor]
OnlineRule = Callable[[Sequence[ExitStats], float], torch.Tensor]

POLICIES: dict[str, PolicyFn] = {}
RULES: dict[str, OnlineRule] = {}


def confidence_rule(history: Sequence[ExitStats], threshold: float) -> torch.Tensor:
    """Leave when no det token is undecided: every token's person probability p is at most
    ``1 - threshold`` (surely not a person) or at least ``threshold`` (surely one).

    With 100 det tokens most tokens are near-certain no-object, so this can fire where requiring
    every token's *top class* probability to pass the threshold (the former rule) practically never does.
    """
    person = history[-1].person
    return ((person <= 1 - threshold) | (person >= threshold)).all(-1)


def patience_rule(history: Sequence[ExitStats], threshold: float) -> torch.Tensor:
    """Leave when the kept detections (person probability >= ``KEEP_SCORE``) of this exit and the
    previous one agree: the same tokens kept, and each kept token's two boxes overlap with IoU >= ``threshold``."""
    if len(history) < 2:
        return torch.zeros(history[-1].person.shape[0], dtype=torch.bool)
    before, now = history[-2], history[-1]
    kept_before, kept_now = before.person >= KEEP_SCORE, now.person >= KEEP_SCORE
    iou = paired_iou(before.boxes, now.boxes).masked_fill(~kept_now, 1.0).min(-1).values
    return (kept_before == kept_now).all(-1) & (iou >= threshold)


def online_policy(rule: OnlineRule) -> PolicyFn:
    """The PolicyFn of an online rule: each image leaves at the first exit where the rule lets it."""

    def policy(records: ExitRecords, threshold: float) -> torch.Tensor:
        layers = records.layers
        exit_layer = torch.full((len(records),), layers[-1], dtype=torch.long)
        running = torch.ones(len(records), dtype=torch.bool)
        for j, layer in enumerate(layers[:-1]):
            leaving = rule([records.stats[k] for k in layers[: j + 1]], threshold) & running
            exit_layer[leaving] = layer
            running &= ~leaving
        return exit_layer

    return policy


def register_policy(name: str, *, policy: PolicyFn | None = None, rule: OnlineRule | None = None) -> None:
    """Add a policy by name: an online ``rule`` (runs live too) or an offline ``policy`` (sweep only)."""
    if (policy is None) == (rule is None):
        raise ValueError(f"policy {name!r}: give exactly one of policy= or rule=")
    if name in ("fixed", "replay"):
        raise ValueError(f"policy {name!r}: reserved by MultiExitYolos")
    if rule is not None:
        RULES[name] = rule
        policy = online_policy(rule)
    POLICIES[name] = policy


def static_exit(records: ExitRecords, layer: int) -> torch.Tensor:
    """Every image at ``layer``: [I] long."""
    if layer not in records.layers:
        raise ValueError(f"exit {layer}: no exit head there (exits {list(records.layers)})")
    return torch.full((len(records),), layer, dtype=torch.long)


register_policy("confidence", rule=confidence_rule)
register_policy("patience", rule=patience_rule)
