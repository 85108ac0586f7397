"""Not viable, or not trained enough? The learning curves of the exit designs' live training say which.

Every fine-tuned or jointly trained exits folder logs each exit's holdout AP50 per epoch (``heads/finetune.py``).
An exit is **still rising** when its AP50 gained more than ``RISING`` from half the epochs to all of them (one
doubling of epochs); else its curve is **flat**. The verdict's budget line then says, with the numbers, whether more
training could change the answer and, if so, the command that gives it twice the epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from probe_kit.decision.names import tuned_blocks_text

RISING = 0.01  # AP50 gained per doubling of epochs above which a curve is still rising (one AP50 point)


@dataclass(frozen=True)
class Curve:
    """One exit's holdout AP50 per epoch, in one exits folder."""

    design: str
    layer: int
    values: tuple[float, ...]
    folder: dict

    @property
    def half(self) -> int:
        """The epoch (1-based) at half the budget: ceil(epochs / 2)."""
        return math.ceil(len(self.values) / 2)

    @property
    def per_doubling(self) -> float | None:
        """AP50 gained from half the epochs to all of them (None: a single epoch, no curve)."""
        return None if len(self.values) < 2 else self.values[-1] - self.values[self.half - 1]

    @property
    def rising(self) -> bool:
        return self.per_doubling is not None and self.per_doubling > RISING


def curves(folders: list[dict]) -> list[Curve]:
    """Every exit's curve (the final layer aside: it is the full model) of every folder with a live stage."""
    out = []
    for folder in folders:
        last = max(folder.get("layers") or [0])
        blocks = tuned_blocks_text(folder["finetuned_blocks"])
        tokens = len(folder.get("det_token_indices") or [])
        head = f"{folder['head']} heads" + (f" on {tokens} det tokens" if tokens else "")
        name = f"{head}, {folder.get('regime', 'finetune')} ({blocks})"
        for layer, values in sorted((folder.get("learning_curves") or {}).items(), key=lambda kv: int(kv[0])):
            if int(layer) != last:
                out.append(Curve(name, int(layer), tuple(values), folder))
    return out


def budget_line(folders: list[dict], verdict: str, command: bool = True) -> str | None:
    """Whether more training could change ``verdict``; None where no folder trained live (nothing to judge).
    ``command``: end a "still rising" line with the command that trains twice the epochs (else point to it)."""
    found = [c for c in curves(folders) if c.per_doubling is not None]
    if not found:
        return None
    if verdict == "early exit pays":
        return f"learning curves: {_steepest(found)}"
    rising = [c for c in found if c.rising]
    if not rising:
        return (
            f"{verdict} at this budget, and the curves are flat: {_steepest(found)}; more training is unlikely to help"
        )
    best = max(rising, key=lambda c: c.per_doubling)
    how = f": {_command(best)}" if command else " (the command is under Rationale)"
    return (
        f"{verdict} at this budget, but {best.design} exit {best.layer} is still rising: {_numbers(best)}; train "
        f"longer on a GPU{how}"
    )


def _numbers(curve: Curve) -> str:
    return (
        f"holdout AP50 {curve.values[curve.half - 1]:.3f} at epoch {curve.half} -> {curve.values[-1]:.3f} at epoch "
        f"{len(curve.values)} ({curve.per_doubling:+.3f} per doubling of epochs)"
    )


def _steepest(found: list[Curve]) -> str:
    best = max(found, key=lambda c: c.per_doubling)
    return f"the steepest, {best.design} exit {best.layer}: {_numbers(best)}"


def _command(curve: Curve) -> str:
    folder, training = curve.folder, curve.folder.get("training") or {}
    exits = ",".join(str(k) for k in folder.get("layers", []))
    regime = training.get("regime", "joint")
    blocks = f" --finetune-blocks {training['finetune_blocks']}" if regime == "finetune" else ""
    tokens = f" --det-tokens {training['det_tokens']}" if training.get("det_tokens") else ""
    return (
        f"probe-kit train-exits --cache {training.get('cache') or 'CACHE'} --layers {exits} --head {folder['head']} "
        f"--regime {regime}{blocks}{tokens} --finetune-epochs {2 * len(curve.values)} --device cuda --out "
        f"{folder['exits_dir']}-longer"
    )
