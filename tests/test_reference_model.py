"""The shipped reference model reproduces the held-out AP50 its model card records."""

import json
import re

import pytest
from click.testing import CliRunner

from probe_kit.cli.main import cli
from probe_kit.models.loading import REFERENCE_DIR
from probe_kit.reference.export import METRICS_FILE, write_heldout_set


@pytest.fixture(scope="module")
def recorded():
    path = REFERENCE_DIR / METRICS_FILE
    assert path.is_file(), f"{path}: the reference model must ship with its held-out metrics"
    return json.loads(path.read_text())


def test_shipped_files_are_small_and_safe():
    files = {p.name: p.stat().st_size for p in REFERENCE_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "MODEL_CARD.md"} <= set(files)
    assert sum(files.values()) < 25 * 2**20
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pkl"))]


def test_model_card_states_the_recorded_numbers(recorded):
    card = (REFERENCE_DIR / "MODEL_CARD.md").read_text()
    stated = re.search(r"held-out AP50[^0-9]*([0-9.]+)", card)
    assert stated and float(stated.group(1)) == pytest.approx(recorded["AP50"], abs=0.0005)
    assert recorded["AP50"] >= 0.6  # the bar


def test_reproduces_recorded_ap50(recorded, tmp_path):
    heldout = write_heldout_set(tmp_path / "heldout", recorded["heldout"]["seed"])
    result = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--model",
            "reference",
            "--data",
            f"synth:{heldout}",
            "--out",
            str(tmp_path / "m.json"),
            "--batch-size",
            "32",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["AP50"] == pytest.approx(recorded["AP50"], abs=0.01)
    assert metrics["AP"] == pytest.approx(recorded["AP"], abs=0.01)
