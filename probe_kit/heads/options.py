"""``ExitTraining``: how exit heads are trained, and the one home of its defaults (the CLI, the YAML and the
Python API read them here). Torch-free, so ``probe-kit --help`` stays instant."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Annotated, Literal

from probe_kit.errors import UserError
from probe_kit.options import (
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Range,
    check_instance,
)
from probe_kit.training.splits import SPLIT_GAP


@dataclass(frozen=True)
class ExitTraining:
    """How exit heads are trained; the one place for the defaults the CLI, YAML and Python API use."""

    epochs: PositiveInt = 30
    lr: PositiveFloat = 5e-4
    batch_size: PositiveInt = 32
    set_weight: NonNegativeFloat = 1.0  # loss against ground truth
    distill_weight: NonNegativeFloat = 1.0  # distillation towards the final layer
    val_fraction: Fraction = 0.3
    val_sequences: tuple[str, ...] = ()
    split_gap: Annotated[float, Range(0, 1, max_open=True)] = SPLIT_GAP  # share of a sequence's frames left out
    train_last: bool = False  # also train the final layer's head (default: keep the model's own)
    finetune_blocks: NonNegativeInt = 0  # then fine-tune the k blocks before each exit jointly, on live images
    finetune_epochs: PositiveInt = 3
    finetune_lr: PositiveFloat = 1e-5
    # frozen: heads on cached tokens only; finetune: then the finetune_blocks blocks before each exit; joint: then
    # every block up to the last exit with every exit's loss, the final layer's own included (REGIMES)
    regime: Literal["frozen", "finetune", "joint"] = "frozen"
    # exits before the last read only the k detection tokens most often matched at the final layer on the training
    # images (the status report's "smaller output space"); None: every detection token
    det_tokens: PositiveInt | None = None
    # joint only: then LGViT's second stage, the heads alone on the jointly trained backbone (frozen), distilled
    # towards its own final layer, for this many epochs (0: none)
    self_distill_epochs: NonNegativeInt = 0

    def __post_init__(self) -> None:
        check_instance(self)  # typed and in range however it was built (CLI, YAML, Python)
        if self.regime == "frozen" and self.finetune_blocks > 0:  # --finetune-blocks K alone: the finetune regime
            object.__setattr__(self, "regime", "finetune")
        if self.regime == "finetune" and self.finetune_blocks == 0:
            raise UserError("regime finetune (--regime): needs finetune_blocks (--finetune-blocks K) of 1 or more")
        if self.regime == "joint" and self.finetune_blocks > 0:
            raise UserError(
                "regime joint (--regime) trains every block up to the last exit: leave out finetune_blocks "
                "(--finetune-blocks)"
            )
        if self.self_distill_epochs > 0 and self.regime != "joint":
            raise UserError(
                "self_distill_epochs (--self-distill-epochs) distils a jointly trained backbone's exits: it needs "
                "regime joint (--regime joint)"
            )
        if self.set_weight == 0 and self.distill_weight == 0:
            raise UserError(
                "set_weight (--set-weight) and distill_weight (--distill-weight) are both 0: no loss to train"
            )

    def to_json(self) -> dict:
        return {**asdict(self), "val_sequences": list(self.val_sequences)}

    @classmethod
    def from_json(cls, data: dict) -> ExitTraining:
        return cls(**{**data, "val_sequences": tuple(data.get("val_sequences", ()))})


def default(name: str) -> object:
    """The default of ``ExitTraining`` field ``name`` (for option parsers)."""
    return next(f.default for f in fields(ExitTraining) if f.name == name)
