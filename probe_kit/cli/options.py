"""Options shared by several commands: dataset specs and model specs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from probe_kit.models import EMBEDDED_MODELS, REFERENCE_NAME


class FiniteFloat(click.ParamType):
    """A float within ``[lo, hi]``; unlike ``click.FloatRange`` it refuses ``nan`` and ``inf``."""

    name = "float"

    def __init__(self, lo: float | None = None, hi: float | None = None) -> None:
        self.lo, self.hi = lo, hi

    def convert(self, value, param, ctx) -> float:
        return self._one(value, param, ctx)

    def _one(self, text: str | float, param, ctx) -> float:
        from probe_kit.data.checks import parse_number

        try:
            return parse_number(text, "value", lo=self.lo, hi=self.hi)
        except ValueError as err:
            self.fail(str(err).removeprefix("value: "), param, ctx)


class FloatList(FiniteFloat):
    """Comma-separated floats, each within ``[lo, hi]`` (``0.3,0.5,0.7``)."""

    name = "floats"

    def convert(self, value, param, ctx) -> tuple[float, ...]:
        items = value if isinstance(value, (tuple, list)) else [item.strip() for item in str(value).split(",")]
        return tuple(self._one(item, param, ctx) for item in items)


class Device(click.ParamType):
    """A torch device this machine has (``cpu``, ``cuda``, ``cuda:1``, ``mps``), checked when the command starts."""

    name = "device"

    def convert(self, value, param, ctx) -> str:
        from probe_kit.distributed import check_device
        from probe_kit.errors import UserError

        try:
            return check_device(str(value), "")
        except UserError as err:
            self.fail(str(err).strip(), param, ctx)


def check_flags(owner: Any, values: dict[str, Any]) -> None:
    """``values`` (parameter name -> value) checked against ``owner``'s declared fields, errors naming the flag
    (``--split-gap: expected ...``) rather than the field."""
    from probe_kit.options import check_value, field_hints

    hints = field_hints(owner)
    for key, value in values.items():
        check_value("--" + key.replace("_", "-"), value, hints[key])


def data_options(func: Callable) -> Callable:
    """``--data SPEC`` plus the flags that narrow it."""
    decorators = [
        click.option("--data", "data", metavar="SPEC", help="mot17:ROOT | coco:ANN.json[:IMAGES_DIR] | synth:DIR"),
        click.option("--sequences", default=None, help="MOT17 sequences, comma-separated (02,04 or MOT17-02-FRCNN)."),
        click.option(
            "--split",
            type=click.Choice(["first-half", "second-half"]),
            default=None,
            help="Per-sequence half (MOT17 layout).",
        ),
        click.option(
            "--min-visibility",
            type=FiniteFloat(0.0, 1.0),
            default=None,
            help="Persons less visible than this (0..1) become ignore regions.",
        ),
        click.option("--stride", type=click.IntRange(min=1), default=None, help="Keep every n-th frame (n >= 1)."),
        click.option(
            "--detector",
            type=click.Choice(["FRCNN", "DPM", "SDP"]),
            default=None,
            help="Which of MOT17's detector copies of each sequence to read (default FRCNN; they share images and gt).",
        ),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def build_data_spec(
    data: str | None,
    sequences: str | None,
    split: str | None,
    min_visibility: float | None,
    stride: int | None,
    detector: str | None = None,
):
    from probe_kit.data.spec import parse_data_spec

    if not data:
        raise click.UsageError("--data is required")
    return parse_data_spec(
        data,
        sequences=tuple(s.strip() for s in sequences.split(",")) if sequences else None,
        split=split,
        min_visibility=min_visibility,
        stride=stride,
        detector=detector,
    )


def model_options(func: Callable) -> Callable:
    """``--model`` (hub id, folder or ``reference``) and how to run it."""
    decorators = [
        click.option(
            "--model",
            "model",
            default=REFERENCE_NAME,
            show_default=True,
            help="Hugging Face hub id, local folder, or 'reference' (the shipped model).",
        ),
        click.option("--revision", default=None, help="Hub revision (branch, tag or commit)."),
        click.option("--device", type=Device(), default="cpu", show_default=True),
        click.option(
            "--model-dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True
        ),
        click.option(
            "--shortest-edge",
            type=click.IntRange(min=16),
            default=None,
            help="Resize so the shortest edge is this many pixels (the original study used 512).",
        ),
        click.option("--batch-size", type=int, default=8, show_default=True),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def build_model_spec(model: str, revision: str | None, device: str, model_dtype: str, shortest_edge: int | None):
    from probe_kit.models.loading import ModelSpec

    if revision is not None and model in EMBEDDED_MODELS:
        raise click.UsageError(f"--revision: the shipped {model!r} model has no revisions; drop it")
    return ModelSpec(name=model, revision=revision, device=device, dtype=model_dtype, shortest_edge=shortest_edge)
