"""Exit heads on k detection tokens (issue: every remedy the status report proposes, runnable): the tokens are
chosen on training images only, recorded by index, read by every exit but the last, refused beyond the model's."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import write_tiny_cache

from probe_kit.cli.main import cli
from probe_kit.heads.interface import TrainingTargets
from probe_kit.heads.training import most_matched_tokens


class _Heads:  # what most_matched_tokens reads of an ExitHead
    name, num_det = "det", 6


def _targets(planted: dict[int, tuple[int, ...]], images: int = 8) -> TrainingTargets:
    """Each image has one person per planted token; the final layer's output at that token is the person's box
    exactly, with a confident person logit, and every other token a far-off, unsure box."""
    rng = np.random.default_rng(0)
    logits = torch.zeros(images, 6, 2)
    boxes = torch.tensor(rng.uniform(0.05, 0.1, (images, 6, 4)), dtype=torch.float32)
    truth = []
    for i in range(images):
        slots = planted.get(i, (1, 4))
        people = torch.tensor(rng.uniform(0.3, 0.7, (len(slots), 4)) * [1, 1, 0.3, 0.3], dtype=torch.float32)
        boxes[i, list(slots)] = people
        logits[i, list(slots), 0] = 6.0
        truth.append({"class_labels": torch.zeros(len(slots), dtype=torch.long), "boxes": people})
    return TrainingTargets(truth, logits, boxes, [], (1, 1), 0, 1, 1.0, 1.0)


def test_the_tokens_most_matched_on_training_images_are_chosen_and_scored_images_do_not_change_it():
    train = np.arange(6)
    assert most_matched_tokens(_Heads(), _targets({}), train, 2) == (1, 4)
    # the two images left out of training match other tokens entirely: the choice does not move
    assert most_matched_tokens(_Heads(), _targets({6: (0, 2, 3), 7: (5, 3)}), train, 2) == (1, 4)
    # the same change on training images does: the check can fail
    moved = {i: (0, 3) for i in range(5)}
    assert most_matched_tokens(_Heads(), _targets(moved), train, 2) == (0, 3)
    # ties go to the lower index; k beyond the model's tokens is refused in one line
    assert most_matched_tokens(_Heads(), _targets({}), train, 3) == (0, 1, 4)
    with pytest.raises(ValueError, match=r"--det-tokens 7: the model has 6 detection tokens; expected 1 to 6"):
        most_matched_tokens(_Heads(), _targets({}), train, 7)


@pytest.fixture(scope="module")
def folders(tiny_model, synth_dir, tmp_path_factory):
    import probe_kit

    root = tmp_path_factory.mktemp("det-tokens")
    cache = write_tiny_cache(tiny_model, synth_dir, root / "c.h5")
    return cache, probe_kit.train_exits(cache, "2", root / "k2", epochs=1, det_tokens=2)


def test_an_exits_folder_records_its_tokens_and_its_early_exit_reads_only_them(folders):
    from probe_kit.heads.store import load_exits

    _, folder = folders
    config = json.loads((folder / "config.json").read_text())
    indices = config["det_token_indices"]
    assert len(indices) == 2 and config["training"]["det_tokens"] == 2
    model, _, heads, _ = load_exits(folder)
    assert heads.token_subset(2) == tuple(indices) and heads.token_subset(heads.depth) is None
    hidden = torch.randn(3, 1 + 16 + heads.num_det, model.config.hidden_size)
    tokens = heads.tokens(2, hidden)
    others = [i for i in range(heads.num_det) if i not in indices]
    changed = tokens.clone()
    changed[:, others] += 5.0  # the tokens exit 2 does not read
    with torch.no_grad():
        for before, after in zip(heads(2, tokens), heads(2, changed), strict=True):
            assert before.shape[1] == 2 and torch.equal(before, after)
        final = heads(heads.depth, tokens)[0]
    assert final.shape[1] == heads.num_det  # the last exit, the model's own head, reads every token


def test_det_tokens_beyond_the_models_count_or_on_dense_heads_are_refused_in_one_line(folders, tmp_path):
    cache, _ = folders
    base = ["train-exits", "--cache", str(cache), "--layers", "2", "--epochs", "1"]
    for extra, message in (
        (["--det-tokens", "6"], "--det-tokens: 6: the model has 5 detection tokens; expected 1 to 5"),
        (["--det-tokens", "0"], "expected 1 to 5"),
        (["--det-tokens", "2", "--head", "dense"], "--det-tokens: applies to det heads, not 'dense'"),
    ):
        result = CliRunner().invoke(cli, [*base, *extra, "--out", str(tmp_path / "x")])
        assert result.exit_code == 2 and message in result.output, result.output
        assert not (tmp_path / "x").exists()


def test_an_edited_token_index_is_refused_when_the_folder_loads(folders, tmp_path):
    from probe_kit.heads.store import load_exits

    _, folder = folders
    edited = tmp_path / "edited"
    shutil.copytree(folder, edited)
    config = json.loads((edited / "config.json").read_text())
    config["det_token_indices"] = [0, 9]
    (edited / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config.json: det_token_indices: expected distinct detection-token indices"):
        load_exits(edited)
