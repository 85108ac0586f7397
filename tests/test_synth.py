import hashlib

import numpy as np
import pytest

from probe_kit.data.mot17 import load_mot17
from probe_kit.data.synth import DEFAULT_MIX, SceneSpec, render_scene, write_synth_dataset


def _digest(folder):
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(folder).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    write_synth_dataset(tmp_path / "a", frames=6, seed=5, progress=False)
    write_synth_dataset(tmp_path / "b", frames=6, seed=5, progress=False)
    write_synth_dataset(tmp_path / "c", frames=6, seed=6, progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


@pytest.mark.parametrize("difficulty,people", [("easy", (1, 1)), ("medium", (2, 3)), ("hard", (4, 7))])
def test_difficulty_controls_crowding(difficulty, people):
    spec = SceneSpec(mix={difficulty: 1.0})
    counts = [len(render_scene(0, i, spec).boxes) for i in range(20)]
    # occluders may hide a person completely, so the count can fall below the drawn number
    assert max(counts) <= people[1]
    assert np.mean(counts) >= people[0] - 0.5
    assert all(render_scene(0, i, spec).difficulty == difficulty for i in range(3))


def test_boxes_inside_image_and_visibility_in_range():
    for i in range(30):
        scene = render_scene(1, i)
        h, w, _ = scene.image.shape
        b = scene.boxes
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
        assert (b[:, 0] + b[:, 2] <= w).all() and (b[:, 1] + b[:, 3] <= h).all()
        assert ((scene.visibility > 0) & (scene.visibility <= 1)).all()


def test_boxes_frame_the_drawn_people():
    """Pixels inside a person's box differ from the background outside all boxes (the figure is there)."""
    scene = render_scene(2, 0, SceneSpec(mix={"easy": 1.0}))
    x, y, w, h = scene.boxes[0].astype(int)
    crop = scene.image[y : y + h, x : x + w].astype(float)
    # a figure has a head, shirt and trousers of different colours: strong variation inside its box
    assert crop.std(axis=(0, 1)).mean() > 15


def test_default_mix_is_respected():
    labels = [render_scene(9, i).difficulty for i in range(300)]
    for name, weight in DEFAULT_MIX.items():
        assert abs(labels.count(name) / 300 - weight) < 0.1


def test_written_layout_is_read_by_the_mot17_loader(synth_dir):
    samples = load_mot17(synth_dir)
    assert len(samples) == 12
    assert {s.meta["difficulty"] for s in samples} <= {"easy", "medium", "hard"}
    assert [s.meta["sequence"] for s in samples[:5]] == ["SYNTH-01"] * 5
    # ground truth goes through the 1-based MOT17 convention and back unchanged
    scene = render_scene(3, 0)
    scored = scene.visibility >= 0.25
    np.testing.assert_allclose(samples[0].boxes, scene.boxes[scored])
    image = np.asarray(samples[0].load_image())
    assert image.shape == scene.image.shape


def test_bad_mix_is_rejected():
    with pytest.raises(ValueError, match="unknown difficulty"):
        SceneSpec(mix={"impossible": 1.0})


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"width": 0}, "width"),  # was "cannot convert float NaN to integer" deep in rendering
        ({"height": float("nan")}, "height"),
        ({"width": 256.5}, "width"),
        ({"mix": {"easy": float("nan")}}, "mix: easy"),
        ({"mix": {"easy": -1.0, "hard": 2.0}}, "mix: easy"),  # numpy would say "probabilities are not non-negative"
        ({"mix": {"easy": 0.0}}, "mix"),
    ],
)
def test_scene_spec_refuses_sizes_and_weights_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        SceneSpec(**kwargs)


@pytest.mark.parametrize(
    "kwargs,field", [({"frames": 0}, "frames"), ({"frames_per_sequence": 0}, "frames_per_sequence")]
)
def test_write_refuses_counts_before_writing(tmp_path, kwargs, field):
    args = {"frames": 2, "seed": 0, "frames_per_sequence": 100, **kwargs}
    with pytest.raises(ValueError, match=f"^{field}"):
        write_synth_dataset(tmp_path / "s", progress=False, **args)
    assert not (tmp_path / "s").exists()
