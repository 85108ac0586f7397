"""Shipping a trained reference model: copy its best checkpoint into the package and record its
held-out metrics, measured through the same path users take (``probe-kit evaluate --model reference``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from probe_kit.data.spec import parse_data_spec
from probe_kit.data.synth import SceneSpec, write_synth_dataset
from probe_kit.io import write_json
from probe_kit.models.evaluate import evaluate_model
from probe_kit.models.loading import REFERENCE_DIR, ModelSpec
from probe_kit.reference.recipe import RecipeConfig

SHIPPED_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
METRICS_FILE = "heldout_metrics.json"


def write_heldout_set(folder: Path, cfg: RecipeConfig = RecipeConfig()) -> Path:
    """The held-out scenes: the recipe's ``heldout_seed`` (never trained on), the default difficulty mix."""
    if not (Path(folder) / "train").is_dir():
        write_synth_dataset(Path(folder), cfg.heldout_frames, cfg.heldout_seed, SceneSpec(cfg.scene_size, cfg.scene_size))
    return Path(folder)


def export_reference(run_dir: Path, heldout_dir: Path, cfg: RecipeConfig = RecipeConfig()) -> dict:
    """Copy ``run_dir/best`` into the package and write its held-out metrics next to it."""
    best = Path(run_dir) / "best"
    missing = [name for name in SHIPPED_FILES if not (best / name).is_file()]
    if missing:
        raise ValueError(f"{best}: missing {missing}; train first with `probe-kit reference train`")
    REFERENCE_DIR.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED_FILES:
        shutil.copy2(best / name, REFERENCE_DIR / name)
    heldout = write_heldout_set(heldout_dir, cfg)
    metrics, _ = evaluate_model(ModelSpec("reference"), parse_data_spec(f"synth:{heldout}"), batch_size=32)
    training = json.loads((best / METRICS_FILE).read_text()) if (best / METRICS_FILE).is_file() else {}
    record = {
        **{k: metrics[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")},
        "heldout": {"seed": cfg.heldout_seed, "frames": cfg.heldout_frames, "size": cfg.scene_size,
                    "mix": "default (easy 0.4, medium 0.35, hard 0.25)"},
        "checkpoint_step": training.get("step"),
    }
    write_json(REFERENCE_DIR / METRICS_FILE, record)
    return record
