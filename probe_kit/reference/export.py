"""Shipping a trained reference model (``reference``, or ``shallow-reference``): copy its best checkpoint into the
package and record its held-out metrics, measured through the same path users take (``probe-kit evaluate --model
reference``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from probe_kit.data.spec import parse_data_spec
from probe_kit.data.synth import SceneSpec, write_synth_dataset
from probe_kit.io import write_json
from probe_kit.models import REFERENCE_NAME
from probe_kit.models.evaluate import evaluate_model
from probe_kit.models.loading import EMBEDDED_DIRS, ModelSpec
from probe_kit.reference.recipe import RecipeConfig

SHIPPED_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
METRICS_FILE = "heldout_metrics.json"
# The test set: a seed used neither for training nor for checkpoint selection (heldout_seed).
TEST_SEED = 17


def write_heldout_set(folder: Path, seed: int = TEST_SEED, cfg: RecipeConfig | None = None) -> Path:
    """Held-out scenes at ``seed`` with the generator's default difficulty mix (``cfg``: the recipe's, default)."""
    cfg = cfg or RecipeConfig()
    if not (Path(folder) / "train").is_dir():
        write_synth_dataset(Path(folder), cfg.heldout_frames, seed, SceneSpec(cfg.scene_size, cfg.scene_size))
    return Path(folder)


def export_reference(
    run_dir: Path, heldout_dir: Path, cfg: RecipeConfig | None = None, name: str = REFERENCE_NAME
) -> dict:
    """Copy ``run_dir/best`` into the package as the embedded model ``name`` and write its held-out metrics next
    to it.

    Scored on two synthetic sets through the real evaluate path: the test seed (never seen in
    training or selection; the number the model card and its test quote) and the selection seed.
    ``cfg``: the recipe (default: ``RecipeConfig()``).
    """
    cfg = cfg or RecipeConfig()
    destination = EMBEDDED_DIRS[name]
    best = Path(run_dir) / "best"
    missing = [name for name in SHIPPED_FILES if not (best / name).is_file()]
    if missing:
        raise ValueError(f"{best}: missing {missing}; train first with `probe-kit reference train`")
    destination.mkdir(parents=True, exist_ok=True)
    for file in SHIPPED_FILES:
        shutil.copyfile(best / file, destination / file)  # contents only: shipped files stay world-readable
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")
    scored = {}
    for part, seed in (("test", TEST_SEED), ("selection", cfg.heldout_seed)):
        folder = write_heldout_set(Path(heldout_dir) / f"seed{seed}", seed, cfg)
        metrics, _ = evaluate_model(ModelSpec(name), parse_data_spec(f"synth:{folder}"), batch_size=32)
        scored[part] = {k: metrics[k] for k in keys}
    training = json.loads((best / METRICS_FILE).read_text()) if (best / METRICS_FILE).is_file() else {}
    record = {
        **scored["test"],
        "heldout": {
            "seed": TEST_SEED,
            "frames": cfg.heldout_frames,
            "size": cfg.scene_size,
            "mix": "default (easy 0.4, medium 0.35, hard 0.25)",
        },
        "selection_set": {"seed": cfg.heldout_seed, **scored["selection"]},
        "checkpoint_step": training.get("step"),
    }
    write_json(destination / METRICS_FILE, record)
    return record
