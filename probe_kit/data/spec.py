"""Dataset specs as the CLI takes them: ``mot17:ROOT``, ``coco:ANN.json[:IMAGES]``, ``synth:DIR``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from probe_kit.data.checks import InputError, short
from probe_kit.data.coco import load_coco
from probe_kit.data.mot17 import DETECTORS, SPLITS, check_selection, load_mot17, skipped_frames
from probe_kit.data.sample import Sample

KINDS = ("mot17", "coco", "synth")


@dataclass(frozen=True)
class DataSpec:
    """A parsed dataset spec plus the options that narrow it; ``describe()`` goes into caches."""

    kind: str
    path: str
    images: str | None = None
    sequences: tuple[str, ...] = ()
    split: str | None = None
    min_visibility: float = 0.0
    stride: int = 1
    detector: str = "FRCNN"
    categories: tuple[str, ...] = field(default=("person",))

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError("data kind", f"one of {KINDS}", short(self.kind))
        check_selection(self.stride, self.min_visibility)
        if self.split not in (None, *SPLITS):
            raise InputError("split", f"one of {SPLITS}", short(self.split))
        if self.detector not in DETECTORS:
            raise InputError("detector", f"one of {DETECTORS}", short(self.detector))

    def load(self) -> list[Sample]:
        """The samples; an empty selection is an error, not an empty result."""
        if self.kind == "coco":
            samples = load_coco(Path(self.path), Path(self.images) if self.images else None, self.categories)
            samples = samples[:: self.stride]
        else:
            samples = load_mot17(
                Path(self.path),
                list(self.sequences) or None,
                self.detector,
                self.split,
                self.min_visibility,
                self.stride,
            )
        if not samples:
            raise ValueError(f"dataset {self.text()}: no images found")
        return samples

    def skipped_frames(self) -> dict[str, int]:
        """Per sequence, the listed frames without an image file that ``load`` skipped (none for COCO)."""
        if self.kind == "coco":
            return {}
        return skipped_frames(Path(self.path), list(self.sequences) or None, self.detector, self.split, self.stride)

    def text(self) -> str:
        suffix = f":{self.images}" if self.images else ""
        return f"{self.kind}:{self.path}{suffix}"

    def describe(self) -> dict:
        """JSON-able description, with the path made absolute."""
        out = asdict(self)
        out["path"] = str(Path(self.path).resolve())
        out["images"] = str(Path(self.images).resolve()) if self.images else None
        out["sequences"] = list(self.sequences)
        out["categories"] = list(self.categories)
        return out

    @classmethod
    def from_description(cls, description: dict) -> DataSpec:
        """The spec ``describe()`` wrote (as stored in a cache), ready to ``load()`` again."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in description.items()})


def parse_data_spec(text: str, **options) -> DataSpec:
    """Parse ``KIND:PATH[:IMAGES]``; ``options`` are the narrowing flags (sequences, split, ...)."""
    kind, sep, rest = text.partition(":")
    if not sep or kind not in KINDS or not rest:
        raise ValueError(f"--data {text!r}: expected mot17:ROOT, coco:ANNOTATIONS.json[:IMAGES_DIR] or synth:DIR")
    images = None
    if kind == "coco":
        json_end = rest.find(".json")
        if json_end >= 0 and rest[json_end + 5 : json_end + 6] == ":":
            rest, images = rest[: json_end + 5], rest[json_end + 6 :]
    if not Path(rest).exists():
        raise ValueError(f"--data {text!r}: {rest} does not exist")
    options = {k: v for k, v in options.items() if v not in (None, ())}
    if "sequences" in options:
        options["sequences"] = tuple(options["sequences"])
    return DataSpec(kind=kind, path=rest, images=images, **options)
