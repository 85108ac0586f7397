"""Loading any Hugging Face YOLOS detector: a hub id, a local folder, or ``reference``.

``reference`` names the small YOLOS shipped inside the package (trained by
``probe-kit reference train``); it goes through the same ``from_pretrained`` path.
"""

from __future__ import annotations

import pickle
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from probe_kit.distributed import check_device, local_device
from probe_kit.models import EMBEDDED_MODELS, REFERENCE_NAME

EMBEDDED_DIRS = {
    name: Path(__file__).resolve().parent.parent / "reference" / folder for name, folder in EMBEDDED_MODELS.items()
}
REFERENCE_DIR = EMBEDDED_DIRS[REFERENCE_NAME]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from and how to run it."""

    name: str = REFERENCE_NAME
    revision: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    shortest_edge: int | None = None  # override the processor's resize (the original study used 512)
    attentions: bool = False  # eager attention, so output_attentions returns real matrices

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype: expected one of {sorted(_DTYPES)}, got {self.dtype!r}")


def resolve_model_path(name: str) -> str:
    """An embedded name (``reference``, ``shallow-reference``) -> its shipped folder; an existing folder -> itself;
    otherwise a hub id."""
    if name in EMBEDDED_DIRS:
        folder = EMBEDDED_DIRS[name]
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"{name} model not found in {folder}; reinstall probe_kit or train and export it with "
                "`probe-kit reference train` and `probe-kit reference export`"
            )
        return str(folder)
    return name


def load_yolos(spec: ModelSpec, source: str = "--model"):
    """Load ``(model, processor)``; the processor comes from the checkpoint. ``source`` names where the
    checkpoint was given in error messages (``--model``, or a recorded ``config.json: base_model``).

    Eager attention is always used: under SDPA, transformers 5.x silently returns no attention
    matrices, and FlopCounterMode counts SDPA as zero FLOPs on CPU.
    """
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoImageProcessor, PretrainedConfig, YolosForObjectDetection

    check_device(spec.device, "device")  # a device this machine lacks: one line now, not deep in torch
    path = resolve_model_path(spec.name)
    local = Path(path).is_dir()
    if not local and Path(path).exists():
        raise ValueError(f"{source} {spec.name}: is a file; expected a checkpoint folder or a hub id")
    if not spec.name.strip():
        raise ValueError(f"{source} {spec.name!r}: expected a checkpoint folder, a hub id or {REFERENCE_NAME!r}")
    if not local and spec.name.startswith(("/", "./", "../", "~")):
        raise FileNotFoundError(f"{source} {spec.name}: no such folder (a hub id looks like owner/name)")
    if local and not (Path(path) / "config.json").is_file():
        raise ValueError(f"{source} {spec.name}: not a model folder (no config.json; make one with save_pretrained)")
    with _quiet_transformers():
        try:
            config, _ = PretrainedConfig.get_config_dict(path, revision=spec.revision)
            check_model_type(spec.name, config, source)
            model, info = YolosForObjectDetection.from_pretrained(
                path,
                revision=spec.revision,
                dtype=_DTYPES[spec.dtype],
                attn_implementation="eager",
                output_loading_info=True,
            )
            processor = AutoImageProcessor.from_pretrained(path, revision=spec.revision)
        except OSError as err:
            first = str(err).splitlines()[0]
            if local:
                raise ValueError(f"{source} {spec.name}: could not load this folder ({first})") from err
            raise ValueError(
                f"{source} {spec.name}: could not load this hub id ({first}). "
                "Offline? Download it first with `huggingface-cli download "
                f"{spec.name}` on a connected machine, or pass a local folder made by save_pretrained."
            ) from err
        except pickle.UnpicklingError as err:  # torch.load(weights_only=True) refused a pickled object
            refused = next((line for line in str(err).splitlines() if "GLOBAL" in line), "not plain tensors")
            raise ValueError(
                f"{source} {spec.name}: its weights file is a pickle that would run code ({refused.strip()}); "
                "not loaded. Re-save a trusted copy with save_pretrained (safetensors)"
            ) from None
        except StrictDataclassError as err:  # config.json values of the wrong type
            raise ValueError(f"{source} {spec.name}: config.json: {' '.join(str(err).split())}") from None
    _refuse_partial_load(f"{source} {spec.name}", info)
    if spec.shortest_edge is not None:
        longest = max(spec.shortest_edge, round(spec.shortest_edge * 1333 / 800))
        processor.size = {"shortest_edge": spec.shortest_edge, "longest_edge": longest}
    model.to(local_device(spec.device)).eval()  # under torchrun, cuda -> this rank's GPU
    return model, processor


def check_model_type(name: str, config: dict, source: str = "--model") -> None:
    """Refuse a checkpoint whose ``config.json`` is not a YOLOS detector's (BERT, ViT, ...)."""
    if not isinstance(config, dict) or config.get("model_type") != "yolos":
        found = config.get("model_type") if isinstance(config, dict) else None
        raise ValueError(f"{source} {name}: config.json says model_type {found!r}; expected a YOLOS detector ('yolos')")


@contextmanager
def _quiet_transformers():
    """No load report, progress bar or hub retry warnings (one per retry, offline) from transformers and
    huggingface_hub: a bad load is refused in one line of ours."""
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging

    verbosity, bars, hub = logging.get_verbosity(), logging.is_progress_bar_enabled(), hub_logging.get_verbosity()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    hub_logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        hub_logging.set_verbosity(hub)
        if bars:
            logging.enable_progress_bar()


def _refuse_partial_load(name: str, info: dict) -> None:
    """Refuse a checkpoint whose weights do not all fit the YOLOS model (else they load freshly initialised)."""
    problems = []
    for key, what in (
        ("missing_keys", "missing"),
        ("unexpected_keys", "unexpected"),
        ("mismatched_keys", "of the wrong shape"),
    ):
        names = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get(key) or ())
        if names:
            problems.append(f"{len(names)} {what} (e.g. {', '.join(names[:3])})")
    if problems:
        raise ValueError(
            f"{name}: its weights do not fit a YOLOS detector: {'; '.join(problems)}; "
            "refusing to run with freshly initialised weights"
        )


def seed_token_embeddings(model: torch.nn.Module, seed: int, std: float = 0.02) -> None:
    """Truncated-normal init of the CLS/detection tokens and position embeddings.

    Hugging Face's random init leaves them at exactly zero (pretrained checkpoints overwrite
    them), which makes every detection token identical; the original YOLOS/DeiT code draws
    them from a truncated normal with std 0.02.
    """
    embeddings = model.vit.embeddings
    generator = torch.Generator().manual_seed(seed)
    params = [embeddings.cls_token, embeddings.detection_tokens, embeddings.position_embeddings]
    mid = getattr(model.vit.encoder, "interpolation", None)
    if mid is not None:
        params.append(mid.mid_position_embeddings)
    with torch.no_grad():
        for param in params:
            values = torch.randn(param.shape, generator=generator).clamp_(-2, 2) * std
            param.copy_(values.to(param.dtype))


def person_label_index(config) -> int:
    """Index of the person class in the model's logits, read from ``id2label``."""
    for index, label in config.id2label.items():
        if str(label).lower() == "person":
            return int(index)
    raise ValueError(f"model config: no 'person' label in id2label {dict(config.id2label)}")
