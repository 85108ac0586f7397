"""Held out by content: an image is its bytes. Training images are recognised whatever their id, folder, name or
order, and other pixels under the same names are new images (issue: held-out decided by image id)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import write_tiny_cache

import probe_kit
from probe_kit.data.identity import file_sha256
from probe_kit.heads.pipeline import Timing, held_out_line

TIMING = Timing(images=1, repeats=3, max_repeats=3)


@pytest.fixture(scope="module")
def trained(tiny_model, synth_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("content")
    cache = write_tiny_cache(tiny_model, synth_dir, folder / "c.h5")
    exits = probe_kit.train_exits(cache, "2", folder / "exits", epochs=1, val_fraction=0.4)
    return exits, json.loads((exits / "config.json").read_text())


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): file_sha256(p) for p in sorted(root.rglob("*.jpg"))}


def test_the_exits_folder_records_the_content_of_every_training_image(trained, synth_dir):
    _, config = trained
    on_disk = set(_hashes(synth_dir).values())
    used = set(config["train_image_sha256"]) | set(config["holdout_image_sha256"])
    assert len(config["train_image_sha256"]) == len(config["train_image_ids"]) > 0
    assert len(config["holdout_image_sha256"]) == len(config["holdout_image_ids"]) > 0
    assert used <= on_disk and len(used) < len(on_disk)


def test_the_same_images_renamed_renumbered_and_reordered_are_still_recognised(trained, synth_dir, tmp_path):
    exits, config = trained
    moved = tmp_path / "elsewhere"
    shutil.copytree(synth_dir, moved)
    sequences = sorted((moved / "train").iterdir())
    for i, seq in enumerate(sequences):  # new names and numbers, in another order: every image id changes
        seq.rename(seq.with_name(f"RENAMED-{90 - i:02d}"))
    result = probe_kit.evaluate_exits(exits, f"synth:{moved}", thresholds=(0.5,), timing=TIMING)
    used = len(config["train_image_sha256"]) + len(config["holdout_image_sha256"])
    assert result["dropped_training_images"] == used
    assert result["held_out_by"] == "content (sha256 of each image file)"
    assert not set(result["scored_image_ids"]) & (set(config["train_image_ids"]) | set(config["holdout_image_ids"]))
    total = len(_hashes(moved))
    assert len(result["scored_image_ids"]) == total - used
    (counts,) = result["evaluated_vs_training_caches"].values()  # the same bytes as the cache: nothing to say
    assert counts == {"evaluated": total, "shared": total, "cache_images": total}
    assert "not the data of the training cache" not in held_out_line(result)


def test_other_pixels_under_the_same_names_are_all_scored(trained, synth_dir, tmp_path):
    from probe_kit.data.synth import write_synth_dataset

    exits, config = trained
    other = tmp_path / "other"
    write_synth_dataset(other, frames=12, seed=99, frames_per_sequence=5, progress=False)  # same names, new scenes
    result = probe_kit.evaluate_exits(exits, f"synth:{other}", thresholds=(0.5,), timing=TIMING)
    assert result["dropped_training_images"] == 0 and len(result["scored_image_ids"]) == 12
    cache = str(Path(config["cache"]))
    cached = len(_hashes(synth_dir))
    assert result["evaluated_vs_training_caches"] == {cache: {"evaluated": 12, "shared": 0, "cache_images": cached}}
    assert f"not the data of the training cache {cache}: 0 of its 12 images are among that cache's {cached}" in (
        held_out_line(result)
    )


def test_a_training_cache_gone_since_training_is_not_compared(trained, synth_dir, tmp_path):
    exits, config = trained
    moved = tmp_path / "exits"
    shutil.copytree(exits, moved)
    edited = {**json.loads((moved / "config.json").read_text()), "cache": str(tmp_path / "deleted.h5")}
    (moved / "config.json").write_text(json.dumps(edited))
    result = probe_kit.evaluate_exits(moved, f"synth:{synth_dir}", thresholds=(0.5,), timing=TIMING)
    assert result["evaluated_vs_training_caches"] == {}
    assert result["dropped_training_images"] == len(config["train_image_sha256"]) + len(config["holdout_image_sha256"])


def test_mot17_image_ids_do_not_depend_on_which_other_sequences_exist(tmp_path):
    from probe_kit.data.mot17 import load_mot17
    from probe_kit.data.synth import write_synth_dataset

    root = tmp_path / "scenes"
    write_synth_dataset(root, frames=9, seed=1, frames_per_sequence=3, progress=False)
    before = {s.file_name: s.image_id for s in load_mot17(root)}
    shutil.copytree(root / "train" / "SYNTH-02", root / "train" / "SYNTH-00")  # a folder sorting first
    after = {s.file_name: s.image_id for s in load_mot17(root)}
    assert {k: after[k] for k in before} == before
    assert before["SYNTH-02/000001.jpg"] == 2 * 100_000 + 1  # from the sequence's own number
