"""Whole studies from YAML files: ``probe-kit run experiments/NAME.yaml`` and the offline demo."""

from pathlib import Path

from probe_kit.experiment.config import ExperimentConfig, load_experiment
from probe_kit.experiment.runner import run_experiment

DEMO_CONFIG = Path(__file__).resolve().parent / "demo.yaml"
DEMO_FAST_CONFIG = Path(__file__).resolve().parent / "demo_fast.yaml"

__all__ = ["DEMO_CONFIG", "DEMO_FAST_CONFIG", "ExperimentConfig", "load_experiment", "run_experiment"]
