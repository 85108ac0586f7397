"""Experiment configs (``experiments/NAME.yaml``): every value's type and range checked before any work.

The fields below declare their types and ranges (``probe_kit.options``); analyzer options are checked
against each analyzer's own declarations and exit-training options against ``ExitTraining``, by the
same checker the command line uses. Errors name the file and the key: ``exp.yaml: synth.frames: ...``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from probe_kit.analyzers import get_analyzer
from probe_kit.data.spec import parse_data_spec
from probe_kit.errors import UserError
from probe_kit.io import read_yaml
from probe_kit.models import EMBEDDED_MODELS
from probe_kit.options import NonNegativeInt, PositiveInt, Range, check_fields, check_value


@dataclass(frozen=True)
class SynthData:
    """Generate synthetic scenes first (the offline default): ``frames`` at ``seed``."""

    frames: PositiveInt = 300
    seed: NonNegativeInt = 11
    size: PositiveInt = 256  # the scene generator checks its own size limits
    frames_per_sequence: PositiveInt = 50  # sequences are the unit of train/validation splits


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    data: str | None = None  # dataset spec (mot17:ROOT, coco:ANN.json, synth:DIR); or `synth` below
    synth: SynthData | None = None
    model: str = "reference"
    revision: str | None = None
    shortest_edge: Annotated[int, Range(min=16)] | None = None
    device: str = "cpu"
    sequences: tuple[str, ...] = ()
    split: Literal["first-half", "second-half"] | None = None
    min_visibility: Annotated[float, Range(0, 1)] | None = None
    stride: PositiveInt | None = None
    detector: Literal["FRCNN", "DPM", "SDP"] | None = None  # MOT17's detector copy to read (default FRCNN)
    val_sequences: tuple[str, ...] = ()
    layers: str | int | tuple[int, ...] = "all"  # "all", "3,6,9,12", "1-4", 12 or [3, 6, 9, 12]
    tokens: tuple[Literal["det", "patch", "cls"], ...] = ("det", "patch")
    attention: bool = False  # cache rollout/attention maps (for the rollout analyzer)
    batch_size: PositiveInt = 16
    seed: NonNegativeInt = 0
    analyzers: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {layers: ..., options}
    # exit heads: layers ("decision" or "4,8,12"), candidates (used when the decision recommends
    # no early exit), ExitTraining options, thresholds, policy
    exits: dict[str, Any] = field(default_factory=dict)
    # decision criteria (probe_kit.decision.criteria_from): bars ("3:0.30,6:0.50" or {3: 0.30}), max_exits, ...
    decision: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _ExitKeys:
    """The ``exits:`` keys beside ``ExitTraining``'s own."""

    layers: str | int = "decision"
    candidates: str | int | None = None
    thresholds: tuple[float, ...] = ()  # finite; their range depends on the policy
    policy: str = "confidence"
    timing_images: PositiveInt | None = None  # evaluate-exits latency: images timed per setting (default 16)
    timing_repeats: Annotated[int, Range(min=3)] | None = None  # ... interleaved rounds (default 15)
    timing_warmup: NonNegativeInt | None = None  # ... and untimed rounds first (default 2)
    designs: dict[str, Any] | None = None  # the exit-design comparison (experiment/designs_stage.py)


def load_experiment(path: Path) -> ExperimentConfig:
    """Parse and validate an experiment YAML (``io.read_yaml``: safe and strict); errors name the file and the key."""
    path = Path(path)
    raw = read_yaml(path, "experiment YAML")  # strict: duplicate keys and oversized files refused, naming the file
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of settings, got {type(raw).__name__}")
    raw = {str(k): v for k, v in raw.items()}
    where = f"{path}: "
    if "name" not in raw:
        raise UserError(f"{path}: missing key 'name'")
    values = check_fields(ExperimentConfig, raw, prefix=where, noun="key")
    if not values["name"].strip() or any(c in values["name"] for c in "/\\") or values["name"] in (".", ".."):
        raise UserError(f"{path}: name: expected a plain folder name (runs/NAME), got {values['name']!r}")
    if bool(values.get("data")) == bool(values.get("synth")):
        raise UserError(f"{path}: give exactly one of 'data' (a dataset spec) or 'synth' (generate scenes)")
    if values.get("synth"):
        _check_scene_size(path, values["synth"].size)
    if values.get("data"):
        values["data"] = _data_spec(path, values["data"])
    if "layers" in values:
        values["layers"] = _layers(f"{path}: layers", values["layers"])
    _check_local_model(path, values.get("model", "reference"))
    if values.get("revision") is not None and values.get("model", "reference") in EMBEDDED_MODELS:
        model = values.get("model", "reference")
        raise UserError(f"{path}: revision: the shipped {model!r} model has no revisions; drop the key")
    from probe_kit.distributed import check_device

    check_device(values.get("device", "cpu"), f"{path}: device")  # cuda on a machine without one: refused now
    values["analyzers"] = {
        name: _analyzer_settings(path, name, settings) for name, settings in values.get("analyzers", {}).items()
    }
    values["exits"] = _exit_settings(path, values.get("exits", {}))
    from probe_kit.decision import criteria_from

    criteria_from(values.get("decision"), f"{path}: decision")  # validated now, before any work starts
    return ExperimentConfig(**values)


def _check_scene_size(path: Path, size: int) -> None:
    from probe_kit.data.synth import SceneSpec

    try:
        SceneSpec(size, size)
    except ValueError as err:
        raise UserError(f"{path}: synth.size: {str(err).split(': ', 1)[-1]}") from None


def _layers(key: str, selection: str | int | tuple[int, ...]) -> str:
    """A layer selection's syntax (lists, ranges, ``all``); indices beyond the model are refused when it loads."""
    from probe_kit.models.layers import resolve_layers

    if isinstance(selection, tuple):
        selection = ",".join(map(str, selection))
    try:
        resolve_layers(str(selection), 10_000)
    except ValueError as err:
        raise UserError(f"{key}: {str(err).removeprefix('--layers ')}") from None
    return str(selection)


def _check_local_model(path: Path, name: str) -> None:
    """A local checkpoint folder (or ``reference``) must be a YOLOS detector; hub ids are checked when they load."""
    from probe_kit.io import read_json
    from probe_kit.models.loading import check_model_type, resolve_model_path

    folder = Path(resolve_model_path(name))
    if (folder / "config.json").is_file():
        try:
            check_model_type(name, read_json(folder / "config.json", "model config"))
        except ValueError as err:
            raise UserError(f"{path}: model: {str(err).removeprefix(f'--model {name}: ')}") from None


def _data_spec(path: Path, text: str) -> str:
    text = os.path.expandvars(text)  # e.g. mot17:${MOT17_ROOT}
    if "$" in text:
        raise UserError(f"{path}: data: {text!r} names an environment variable that is not set")
    try:
        parse_data_spec(text)
    except ValueError as err:
        raise UserError(f"{path}: data: {err}") from None
    return text


def _analyzer_settings(path: Path, name: str, settings: Any) -> dict[str, Any]:
    """``analyzers.NAME``: nothing or a mapping of ``layers`` plus the analyzer's own options."""
    key = f"{path}: analyzers.{name}"
    try:
        info = get_analyzer(name)
    except ValueError as err:
        raise UserError(f"{key}: {err}") from None
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise UserError(f"{key}: expected a mapping of options (or nothing), got {settings!r}")
    from probe_kit.analyzers._options import check_options

    options = {k: v for k, v in settings.items() if k != "layers"}
    checked = check_options(info, options, where=f"{key}.")
    if "layers" in settings:
        checked["layers"] = _layers(
            f"{key}.layers", check_value(f"{key}.layers", settings["layers"], str | int | tuple[int, ...])
        )
    return checked


def _exit_settings(path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """``exits``: ``ExitTraining`` options plus ``layers``, ``candidates``, ``thresholds``, ``policy``."""
    from probe_kit.heads.options import ExitTraining

    own = {f.name for f in dataclasses.fields(_ExitKeys)}
    training = {k: v for k, v in settings.items() if k not in own}
    known = sorted(own | {f.name for f in dataclasses.fields(ExitTraining)})
    for key in training:
        if key not in known:
            raise UserError(f"{path}: exits: unknown key {key!r}; expected one of {known}")
    checked = check_fields(ExitTraining, training, prefix=f"{path}: exits.")
    checked |= check_fields(_ExitKeys, {k: v for k, v in settings.items() if k in own}, prefix=f"{path}: exits.")
    for key in ("layers", "candidates"):
        if checked.get(key) not in (None, "decision"):
            checked[key] = _layer_list(f"{path}: exits.{key}", checked[key])
    if checked.get("designs") is not None:
        from probe_kit.experiment.designs_stage import DesignsConfig

        DesignsConfig.from_yaml(checked["designs"], f"{path}: exits.designs")
    return checked


def _layer_list(key: str, value: str | int) -> str:
    """Exit layers: block numbers, comma-separated (``4,8,12``)."""
    tokens = [t.strip() for t in str(value).split(",")]
    if not all(t.isdigit() and int(t) >= 1 for t in tokens):
        raise UserError(f"{key}: expected block numbers such as 4,8,12 (or 'decision'), got {value!r}")
    return ",".join(tokens)
