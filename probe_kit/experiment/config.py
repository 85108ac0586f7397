"""Experiment configs (``experiments/NAME.yaml``): validated before any work starts."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from probe_kit.analyzers import get_analyzer
from probe_kit.data.spec import parse_data_spec


@dataclass(frozen=True)
class SynthData:
    """Generate synthetic scenes first (the offline default): ``frames`` at ``seed``."""

    frames: int = 300
    seed: int = 11
    size: int = 256
    frames_per_sequence: int = 50  # sequences are the unit of train/validation splits


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    data: str | None = None  # dataset spec (mot17:ROOT, coco:ANN.json, synth:DIR); or `synth` below
    synth: SynthData | None = None
    model: str = "reference"
    revision: str | None = None
    shortest_edge: int | None = None
    device: str = "cpu"
    sequences: tuple[str, ...] = ()
    split: str | None = None
    min_visibility: float | None = None
    stride: int | None = None
    val_sequences: tuple[str, ...] = ()
    layers: str = "all"
    tokens: tuple[str, ...] = ("det", "patch")
    attention: bool = False  # cache rollout/attention maps (for the rollout analyzer)
    batch_size: int = 16
    seed: int = 0
    analyzers: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {layers: ..., options}
    # exit heads: layers ("decision" or "4,8,12"), candidates (used when the decision recommends
    # no early exit), ExitTraining options, thresholds, policy
    exits: dict[str, Any] = field(default_factory=dict)
    # decision criteria (probe_kit.decision.criteria_from): bars ("3:0.30,6:0.50" or {3: 0.30}), max_exits, ...
    decision: dict[str, Any] = field(default_factory=dict)


_TYPES = {
    "name": str,
    "data": str,
    "model": str,
    "revision": str,
    "shortest_edge": int,
    "device": str,
    "sequences": list,
    "split": str,
    "min_visibility": float,
    "stride": int,
    "val_sequences": list,
    "layers": str,
    "tokens": list,
    "attention": bool,
    "batch_size": int,
    "seed": int,
    "analyzers": dict,
    "synth": dict,
    "exits": dict,
    "decision": dict,
}


def _check_type(path: Path, key: str, value: Any) -> None:
    expected = _TYPES[key]
    ok = isinstance(value, expected) or (expected is float and isinstance(value, int)) or value is None
    if expected is not bool and isinstance(value, bool):
        ok = False
    if not ok:
        raise ValueError(f"{path}: {key}: expected {expected.__name__}, got {type(value).__name__} {value!r}")


def load_experiment(path: Path) -> ExperimentConfig:
    """Parse and validate an experiment YAML (``yaml.safe_load``); errors name the key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such experiment file") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of settings")
    known = {f.name for f in dataclasses.fields(ExperimentConfig)}
    for key, value in raw.items():
        if key not in known:
            raise ValueError(f"{path}: unknown key {key!r}; expected one of {sorted(known)}")
        _check_type(path, key, value)
    if "name" not in raw:
        raise ValueError(f"{path}: missing key 'name'")
    if bool(raw.get("data")) == bool(raw.get("synth")):
        raise ValueError(f"{path}: give exactly one of 'data' (a dataset spec) or 'synth' (generate scenes)")
    if raw.get("synth"):
        synth_keys = {f.name for f in dataclasses.fields(SynthData)}
        unknown = set(raw["synth"]) - synth_keys
        if unknown:
            raise ValueError(f"{path}: synth.{sorted(unknown)[0]}: unknown key; expected {sorted(synth_keys)}")
        raw["synth"] = SynthData(**raw["synth"])
    for name, options in (raw.get("analyzers") or {}).items():
        try:
            accepted = get_analyzer(name).option_names()
        except ValueError as err:
            raise ValueError(f"{path}: analyzers.{name}: {err}") from None
        for option in options or {}:
            if option != "layers" and option not in accepted:
                raise ValueError(f"{path}: analyzers.{name}.{option}: unknown option; expected {accepted}")
    if raw.get("data"):
        raw["data"] = os.path.expandvars(raw["data"])  # e.g. mot17:${MOT17_ROOT}
        if "$" in raw["data"]:
            raise ValueError(f"{path}: data: {raw['data']!r} names an environment variable that is not set")
        try:
            parse_data_spec(raw["data"])
        except ValueError as err:
            raise ValueError(f"{path}: data: {err}") from None
    from probe_kit.heads.train import ExitTraining

    exit_keys = set(ExitTraining.__dataclass_fields__) | {"layers", "candidates", "thresholds", "policy"}
    for key in raw.get("exits") or {}:
        if key not in exit_keys:
            raise ValueError(f"{path}: exits.{key}: unknown key; expected {sorted(exit_keys)}")
    from probe_kit.decision import criteria_from

    criteria_from(raw.get("decision"), f"{path}: decision")  # validated now, before any work starts
    for key in ("sequences", "val_sequences", "tokens"):
        if key in raw:
            raw[key] = tuple(raw[key])
    raw["analyzers"] = {k: dict(v or {}) for k, v in (raw.get("analyzers") or {}).items()}
    return ExperimentConfig(**raw)
