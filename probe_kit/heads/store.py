"""The exits folder: ``config.json`` (``ExitsConfig``) + ``heads.safetensors`` (+ ``blocks.safetensors``).

``config.json`` records the head type (``head``, a ``HEAD_TYPES`` name; ``det`` where absent), the exit
layers, the base model's record (``base_model``: checkpoint, weights fingerprint, dtype, image processor
class and config, see ``models/record.py``), the cache, which images trained and early-stopped the heads,
the training options and per-epoch losses. ``load_exits`` rebuilds the base model from that record, so
exits are evaluated at the input size their tokens were cached at.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from probe_kit.errors import short
from probe_kit.heads.interface import ExitHead
from probe_kit.heads.registry import head_type
from probe_kit.io import write_error, write_json
from probe_kit.models.record import ModelRecord, load_recorded

# 2: one head interface; fine-tune history per exit (L<k>_loss, ...); image sha256s
# 3: base_model_sha256, so a model record edited after training is refused
EXITS_SCHEMA_VERSION = 3


@dataclass(frozen=True)
class ExitsConfig:
    """An exits folder's ``config.json``, validated on read (one-line errors naming the file and field)."""

    layers: tuple[int, ...]
    base_model: dict  # ModelRecord.to_json()
    train_image_ids: tuple[int, ...]
    holdout_image_ids: tuple[int, ...]
    head: str = "det"
    # sha256 of each training / early-stopping image file, in the order of the ids: what held-out is decided by
    train_image_sha256: tuple[str, ...] = ()
    holdout_image_sha256: tuple[str, ...] = ()
    cache: str = ""
    cache_fingerprint: str = ""
    split: dict = field(default_factory=dict)
    seed: int = 0
    training: dict = field(default_factory=dict)
    history: dict = field(default_factory=dict)
    finetuned_blocks: tuple[int, ...] = ()
    finetune_history: tuple[dict, ...] = ()
    self_distill_history: tuple[dict, ...] = ()  # the joint regime's optional second stage, per epoch
    finetune_processes: int | None = None
    inputs_key: str | None = None  # set by ``probe-kit run``'s design stage: the hash of what trained it
    base_model_sha256: str = ""  # of ``base_model`` as trained with (``record_sha256``); "" before schema 3
    # --det-tokens: the detection tokens exits before the last read, chosen on the training images; () = all
    det_token_indices: tuple[int, ...] = ()
    schema_version: int = EXITS_SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not self.base_model_sha256:
            object.__setattr__(self, "base_model_sha256", record_sha256(self.base_model))

    @property
    def regime(self) -> str:
        """How the backbone was trained: frozen, finetune (k blocks before each exit) or joint (every block)."""
        return self.training.get("regime") or ("finetune" if self.finetuned_blocks else "frozen")

    def learning_curves(self) -> dict[str, list[float]]:
        """Holdout AP50 per exit and epoch of the live stage (finetune, joint): ``{"6": [0.21, 0.25, ...]}``."""
        curves: dict[str, list[float]] = {}
        for epoch in self.finetune_history:
            for key, value in epoch.items():
                if key.startswith("holdout_AP50_L"):
                    curves.setdefault(key.removeprefix("holdout_AP50_L"), []).append(value)
        return curves

    @property
    def trained_ids(self) -> set[int]:
        """Ids of the images that trained or early-stopped the heads (for people; see ``trained_hashes``)."""
        return set(self.train_image_ids) | set(self.holdout_image_ids)

    @property
    def trained_hashes(self) -> set[str] | None:
        """Content of the images that trained or early-stopped the heads: never scored (None: not recorded)."""
        if not self.train_image_sha256:
            return None
        return set(self.train_image_sha256) | set(self.holdout_image_sha256)

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: object, where: str) -> ExitsConfig:
        """Validated from a parsed ``config.json``; unknown keys of older versions are ignored."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a JSON object")  # noqa: TRY004 (user input: ValueError by house rule)
        for key in ("base_model", "layers", "train_image_ids", "holdout_image_ids"):
            if key not in data:
                raise ValueError(
                    f"{where}: no {key!r}, so it cannot be loaded or its held-out images told apart; retrain the "
                    "heads with `probe-kit train-exits`"
                )
        _check_ints(data["layers"], f"{where}: layers", "a list of positive layer numbers", minimum=1)
        _check_ints(data["train_image_ids"], f"{where}: train_image_ids", "a non-empty list of image ids (integers)")
        _check_ints(data["holdout_image_ids"], f"{where}: holdout_image_ids", "a list of image ids", empty=True)
        _check_ints(data.get("finetuned_blocks", []), f"{where}: finetuned_blocks", "block indices", empty=True)
        _check_ints(data.get("det_token_indices", []), f"{where}: det_token_indices", "token indices", empty=True)
        if "train_image_sha256" in data or "holdout_image_sha256" in data:  # folders before hashes have neither
            for key, ids in (("train_image_sha256", "train_image_ids"), ("holdout_image_sha256", "holdout_image_ids")):
                _check_hashes(data.get(key), len(data[ids]), f"{where}: {key}")
        if not isinstance(data.get("head", "det"), str):
            raise ValueError(f"{where}: head: expected a head type name, got {data['head']!r}")
        recorded = data.get("base_model_sha256")
        if recorded is not None and recorded != record_sha256(data["base_model"]):
            raise ValueError(
                f"{where}: base_model differs from the model record the heads were trained with (its sha256 is "
                "recorded in base_model_sha256): it was edited after training, and would load another model or "
                "input size; restore it or retrain the heads"
            )
        known = {f.name for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        return cls(**values)


def record_sha256(record: object) -> str:
    """sha256 of a model record's canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _check_ints(value: object, where: str, what: str, minimum: int | None = None, empty: bool = False) -> None:
    integers = isinstance(value, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in value)
    if not integers or (not value and not empty) or (minimum is not None and any(i < minimum for i in value)):
        raise ValueError(f"{where}: expected {what}, got {short(value)}")


_HEX = frozenset("0123456789abcdef")


def _check_hashes(value: object, count: int, where: str) -> None:
    """``count`` sha256 digests as ``hashlib`` writes them (64 lowercase hex characters): a digest in another
    spelling would silently match no image, and its training image would be scored as held-out."""
    hexes = isinstance(value, list) and all(isinstance(h, str) and len(h) == 64 and set(h) <= _HEX for h in value)
    if not hexes or len(value) != count:
        raise ValueError(
            f"{where}: expected {count} sha256 digests, 64 lowercase hex characters each (one per image id), got "
            f"{short(value)}"
        )


def save_exits(heads: ExitHead, config: ExitsConfig, out: Path, blocks: dict[str, torch.Tensor] | None = None) -> Path:
    """``heads.safetensors`` + ``config.json`` (+ ``blocks.safetensors``: fine-tuned blocks over the base)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _save_tensors({k: v.contiguous() for k, v in heads.state_dict().items()}, out / "heads.safetensors")
    if blocks:
        _save_tensors({k: v.contiguous() for k, v in blocks.items()}, out / "blocks.safetensors")
    write_json(out / "config.json", config.to_json())  # last: a folder without it is no exits folder
    return out


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """``save_file`` to a temporary name, renamed once written; a failure names ``path`` and leaves nothing."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        save_file(tensors, partial)
        os.replace(partial, path)
    except (SafetensorError, OSError) as err:
        raise write_error(path, err) from None
    finally:
        partial.unlink(missing_ok=True)


def read_exits_config(folder: Path) -> ExitsConfig:
    """``config.json`` of an exits folder, validated (one-line errors)."""
    folder = Path(folder)
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder}: not an exits folder (no config.json; make one with `probe-kit train-exits`)"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    return ExitsConfig.from_json(data, str(path))


def stamp_inputs_key(folder: Path, key: str) -> None:
    """Record in ``folder``'s config.json the hash of the inputs that trained it (``probe-kit run``)."""
    config = replace(read_exits_config(folder), inputs_key=key)
    (Path(folder) / "config.json").write_text(json.dumps(config.to_json(), indent=2))


def up_to_date(folder: Path, key: str) -> bool:
    """Whether ``folder`` holds exits trained from inputs hashing to ``key`` (``stamp_inputs_key``)."""
    try:
        return read_exits_config(folder).inputs_key == key
    except (OSError, ValueError):
        return False


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    bad = next((name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if bad is not None:
        raise ValueError(f"{path}: tensor {bad} holds NaN or infinity; these weights cannot give a number")
    return tensors


def load_exits(folder: Path, device: str = "cpu") -> tuple[torch.nn.Module, object, ExitHead, ExitsConfig]:
    """``(model, processor, heads, config)`` of a saved exits folder, on ``device``.

    The model and its image processor are rebuilt from the recorded ``base_model``; refused, in one
    line, when its weights changed, when the heads do not fit it, or when a file is missing.
    """
    folder = Path(folder)
    config = read_exits_config(folder)
    where = str(folder / "config.json")
    cls = head_type(config.head, f"{where}: head")
    record = ModelRecord.from_json(config.base_model, f"{where}: base_model")
    heads_state = _tensors(folder / "heads.safetensors")
    blocks = _tensors(folder / "blocks.safetensors") if config.finetuned_blocks else None
    model, processor = load_recorded(record, device, f"{where}: base_model")
    depth = model.config.num_hidden_layers
    if max(config.layers) > depth:
        raise ValueError(f"{where}: layers {list(config.layers)} exceed {record.name}'s {depth} blocks")
    if blocks is not None:
        expected = model.state_dict()
        bad = [k for k, v in blocks.items() if k not in expected or expected[k].shape != v.shape]
        if bad:
            raise ValueError(f"{folder / 'blocks.safetensors'}: tensors {bad[:3]} do not fit {record.name}")
        model.load_state_dict(blocks, strict=False)
    heads = cls.from_model(model, config.layers)
    if config.det_token_indices:
        heads.use_det_tokens(config.det_token_indices, f"{where}: det_token_indices")
    try:
        heads.load_state_dict(heads_state)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise ValueError(
            f"{folder / 'heads.safetensors'}: the heads do not fit {record.name} at layers {list(config.layers)} "
            f"({first})"
        ) from None
    heads.to(device).eval()
    return model, processor, heads, config
