"""The shipped reference model reproduces the held-out AP50 its model card records."""

import json
import re

import pytest
from click.testing import CliRunner

from probe_kit.cli.main import cli
from probe_kit.models import EMBEDDED_MODELS
from probe_kit.models.loading import EMBEDDED_DIRS
from probe_kit.reference.export import METRICS_FILE, write_heldout_set


@pytest.fixture(scope="module", params=sorted(EMBEDDED_MODELS))
def shipped(request):
    """``(name, folder, its recorded held-out metrics)`` of each embedded model."""
    path = EMBEDDED_DIRS[request.param] / METRICS_FILE
    assert path.is_file(), f"{path}: the {request.param} model must ship with its held-out metrics"
    return request.param, EMBEDDED_DIRS[request.param], json.loads(path.read_text())


def test_shipped_files_are_small_and_safe(shipped):
    _, folder, _ = shipped
    files = {p.name: p.stat().st_size for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "MODEL_CARD.md"} <= set(files)
    assert sum(files.values()) < 25 * 2**20
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pkl"))]


def test_model_card_states_the_recorded_numbers(shipped):
    name, folder, recorded = shipped
    card = (folder / "MODEL_CARD.md").read_text()
    stated = re.search(r"held-out AP50[^0-9]*([0-9.]+)", card)
    assert stated and float(stated.group(1)) == pytest.approx(recorded["AP50"], abs=0.0005)
    if name == "reference":
        assert recorded["AP50"] >= 0.6  # the bar


def test_reproduces_recorded_ap50(shipped, tmp_path):
    name, _, recorded = shipped
    heldout = write_heldout_set(tmp_path / "heldout", recorded["heldout"]["seed"])
    result = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--model",
            name,
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
