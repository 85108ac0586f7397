"""Exit policies: the interface. A policy is described by a ``PolicySpec`` and registered in
``heads/policy_registry.py`` (built-ins and plug-ins alike); docs/exit-policies.md has a complete toy.

A fitted policy maps recorded outputs and a threshold to an exit layer per image::

    PolicyFn = Callable[[ExitRecords, float], torch.Tensor]   # -> [I] long, each image's exit layer

It must be pure (same records and threshold, same answer) and may read every exit of an image, the
final layer included: a bound such as ``oracle`` is a PolicyFn. A policy that can also run *live*
(in ``MultiExitYolos``, where later exits do not exist yet) is written as an **online rule**::

    OnlineRule = Callable[[Sequence[ExitStats], float], torch.Tensor]   # -> [b] bool

called at each exit but the last with the ``ExitStats`` of the exits seen so far (oldest first, rows =
the images still running), answering which images may leave now; it must be row-wise. ``online_policy``
turns a rule into the PolicyFn that makes the same decisions as the live model (tested against it);
a policy with a rule is timed live (its own cost included), one without by replaying its recorded exits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from probe_kit.heads.records import KEEP_SCORE, ExitRecords, ExitStats
from probe_kit.ops.boxes import paired_iou

PolicyFn = Callable[[ExitRecords, float], torch.Tensor]
OnlineRule = Callable[[Sequence[ExitStats], float], torch.Tensor]


@dataclass(frozen=True)
class FittedPolicy:
    """A policy ready to score records: ``choose`` (a PolicyFn), the ``rule`` that runs it live (None: an
    offline policy, timed by replaying its exits) and ``info`` recorded beside its settings (e.g. what a
    gate learned from)."""

    choose: PolicyFn
    rule: OnlineRule | None = None
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PolicyInputs:
    """What ``PolicySpec.fit`` may use: the records of the heads' *training* images (only for ``fitted``
    specs; never scored images), the seed, and the agreement target of gates and bounds."""

    training: ExitRecords | None
    seed: int
    target_f1: float


@dataclass(frozen=True)
class PolicySpec:
    """An exit policy: its ``name``, default threshold grid, how it is fitted, and what it is.

    ``bound``: it looks at every exit of an image (no deployable policy can), so it is reported as a
    bound, kept off the Pareto front and never timed. ``fitted``: ``fit`` reads ``PolicyInputs.training``.
    ``cost``: GFLOPs the policy adds per intermediate exit evaluated, from ``(tokens the exit reads,
    hidden size)``; None when it adds nothing that FLOPs count.
    """

    name: str
    thresholds: tuple[float, ...]
    fit: Callable[[PolicyInputs], FittedPolicy]
    summary: str
    bound: bool = False
    fitted: bool = False
    cost: Callable[[int, int], float] | None = None

    @property
    def label(self) -> str:
        """The name results carry (a bound says so in its name)."""
        return f"{self.name} (bound, not a result)" if self.bound else self.name


def online(rule: OnlineRule) -> Callable[[PolicyInputs], FittedPolicy]:
    """``PolicySpec.fit`` of a policy that is one fixed online rule."""
    return lambda _inputs: FittedPolicy(online_policy(rule), rule)


def confidence_rule(history: Sequence[ExitStats], threshold: float) -> torch.Tensor:
    """Leave when no detection slot is undecided: every slot's person probability p is at most
    ``1 - threshold`` (surely not a person) or at least ``threshold`` (surely one)."""
    person = history[-1].person
    return ((person <= 1 - threshold) | (person >= threshold)).all(-1)


def patience_rule(history: Sequence[ExitStats], threshold: float) -> torch.Tensor:
    """Leave when the kept detections (person probability >= ``KEEP_SCORE``) of this exit and the
    previous one agree: the same slots kept, and each kept slot's two boxes overlap with IoU >= ``threshold``."""
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


def static_exit(records: ExitRecords, layer: int) -> torch.Tensor:
    """Every image at ``layer``: [I] long."""
    if layer not in records.layers:
        raise ValueError(f"exit {layer}: no exit head there (exits {list(records.layers)})")
    return torch.full((len(records),), layer, dtype=torch.long)
