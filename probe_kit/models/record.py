"""The model record: everything a later stage needs to rebuild the model a cache was made with, exactly.

A record holds the checkpoint (``name``, ``revision``), its weights ``fingerprint``, the ``dtype`` it
ran in, and the image processor *as used*: its class (transformers picks ``YolosImageProcessorPil``
or the torchvision ``YolosImageProcessor`` by what is installed, and their pixels differ by up to
0.0175) and its full config, including a ``--shortest-edge`` override. The cache stores it in its
``model`` and ``preprocessing`` attributes, every exits folder in ``config.json`` (``base_model``);
``load_recorded`` is the one loader that rebuilds from it. The device is not part of the record: it
is a run-time choice.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import torch

from probe_kit.models.loading import ModelSpec, load_yolos

_FIELDS = ("name", "revision", "fingerprint", "dtype", "processor_class", "processor")


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over the state dict (names, shapes, dtypes, bytes), in name order; 16 hex digits."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def processor_config(processor) -> dict:
    """The processor's full config as JSON values (enums -> values, tuples -> lists)."""
    return json.loads(json.dumps(processor.to_dict(), sort_keys=True, default=str))


@dataclass(frozen=True)
class ModelRecord:
    """How to rebuild a model and its preprocessing exactly (see the module docstring)."""

    name: str
    revision: str | None
    fingerprint: str
    dtype: str
    processor_class: str  # e.g. YolosImageProcessorPil (PIL backend) or YolosImageProcessor (torchvision)
    processor: dict = field(hash=False)  # processor.to_dict() as used, incl. size.shortest_edge

    @classmethod
    def of(cls, model, processor, spec: ModelSpec) -> ModelRecord:
        """The record of a model and processor loaded from ``spec`` (``load_yolos``)."""
        return cls(
            spec.name,
            spec.revision,
            weights_fingerprint(model),
            spec.dtype,
            type(processor).__name__,
            processor_config(processor),
        )

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict, where: str) -> ModelRecord:
        """Parse a record (an exits folder's ``base_model``); a missing field is a one-line error."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a model record, an object with {list(_FIELDS)}")  # noqa: TRY004
        missing = [k for k in _FIELDS if k not in data]
        if missing:
            raise ValueError(
                f"{where}: model record lacks {missing} (made before model records existed?); "
                "make it again with this probe_kit"
            )
        return cls(**{k: data[k] for k in _FIELDS})

    def cache_attrs(self, config: dict) -> dict[str, str]:
        """The cache's ``model`` and ``preprocessing`` identity attributes (``config``: the model's config)."""
        model = {k: getattr(self, k) for k in ("name", "revision", "dtype", "fingerprint")}
        return {
            "model": json.dumps({**model, "config": config}, sort_keys=True, default=str),
            "preprocessing": json.dumps({**self.processor, "processor_class": self.processor_class}, sort_keys=True),
        }

    @classmethod
    def from_cache_attrs(cls, model: dict, preprocessing: dict, where: str) -> ModelRecord:
        """The record stored in a cache's (parsed) ``model`` and ``preprocessing`` attributes."""
        processor = {k: v for k, v in preprocessing.items() if k != "processor_class"}
        data = {**{k: model.get(k) for k in ("name", "revision", "fingerprint", "dtype")}, "processor": processor}
        if "processor_class" in preprocessing:
            data["processor_class"] = preprocessing["processor_class"]
        return cls.from_json(data, where)

    @property
    def shortest_edge(self) -> int | None:
        return (self.processor.get("size") or {}).get("shortest_edge")


def build_processor(record: ModelRecord, where: str):
    """The recorded image processor, rebuilt from its recorded config with its recorded class."""
    import transformers

    cls = getattr(transformers, record.processor_class, None)
    if cls is None:
        raise ValueError(f"{where}: image processor {record.processor_class!r} is not in this transformers")
    processor = cls.from_dict(dict(record.processor))
    if type(processor).__name__ != record.processor_class:  # e.g. torchvision missing: transformers falls back
        raise ValueError(
            f"{where}: recorded with {record.processor_class} but this environment builds "
            f"{type(processor).__name__} (pixels differ); install the recorded backend (torchvision) or re-cache"
        )
    if processor_config(processor) != record.processor:
        raise ValueError(f"{where}: the rebuilt {record.processor_class} does not reproduce the recorded config")
    return processor


def load_recorded(record: ModelRecord, device: str = "cpu", where: str = "model record"):
    """``(model, processor)`` rebuilt from ``record`` on ``device``; refused if the weights changed."""
    model, _ = load_yolos(ModelSpec(record.name, record.revision, device=device, dtype=record.dtype), f"{where}: name")
    found = weights_fingerprint(model)
    if found != record.fingerprint:
        raise ValueError(
            f"{where}: {record.name} now has weights {found}, but {record.fingerprint} were recorded; "
            "pass the checkpoint that made it"
        )
    return model, build_processor(record, where)
