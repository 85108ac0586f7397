"""Analyzers on a tiny random model's cache, and a probe test that can fail."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import write_cache_by_hand, write_tiny_cache

from probe_kit.analyzers import get_analyzer, list_analyzers, run_analyzer, write_result
from probe_kit.analyzers.lens import TunedLens
from probe_kit.cache.reader import FeatureCache
from probe_kit.cache.schema import TokenLayout
from probe_kit.cli.main import cli
from probe_kit.models.heads import DetectionHead
from probe_kit.models.loading import ModelSpec, load_yolos

# Options that keep each analyzer fast on the tiny cache; an analyzer missing here runs with its defaults,
# and the tests below are parametrised over the registry itself, so a new analyzer cannot go untested.
FAST = {
    "lens": {},
    "tuned-lens": {"epochs": 2},
    "probe-linear": {"epochs": 2},
    "probe-mlp": {"epochs": 2},
    "probe-dense": {"epochs": 2},
    "flops": {},
    "rollout": {},
    "clustering": {"umap": False, "max_points": 200},
    "attribution": {"images": 2, "steps": 8},
}
ANALYZERS = sorted(a.name for a in list_analyzers())


@pytest.fixture(scope="module")
def tiny_cache(tiny_model, synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("a") / "c.h5"
    return write_tiny_cache(tiny_model, synth_dir, out, tokens=("det", "patch"), dtype="float32", attention=True)


def test_every_analyzer_is_listed_with_a_summary():
    assert set(FAST) <= set(ANALYZERS)
    assert all(a.summary for a in list_analyzers())


@pytest.mark.parametrize("name", ANALYZERS)
def test_runs_end_to_end_and_is_deterministic(name, tiny_cache, tmp_path):
    a = run_analyzer(name, tiny_cache, "2,4", seed=3, **FAST.get(name, {}))
    b = run_analyzer(name, tiny_cache, "2,4", seed=3, **FAST.get(name, {}))
    assert a.to_json() == b.to_json()
    path = write_result(a, tmp_path / name)
    saved = json.loads(path.read_text())
    assert saved["analyzer"] == name and saved["seed"] == 3
    assert set(saved["layers"]) == {"2", "4"}
    with FeatureCache(tiny_cache) as cache:
        assert saved["cache_fingerprint"] == cache.fingerprint
    # the registry's metadata is recorded, and the headline metric it promises is there on every layer
    info = get_analyzer(name)
    assert saved["meta"] == info.meta()
    for metrics in saved["layers"].values():
        if info.metric:
            assert info.metric in metrics, f"{name}: headline metric {info.metric!r} promised by register() is missing"
        if info.role == "readout":
            assert 0 <= metrics["AP50"] <= 1
    if name == "flops":
        assert saved["layers"]["4"]["fraction_of_full"] == pytest.approx(1.0)
        return
    if name == "rollout":
        for metrics in saved["layers"].values():
            assert 0 <= metrics["inbox_mass"] <= 1 and 0 <= metrics["pointing_game"] <= 1
        return
    if name == "attribution":
        for metrics in saved["layers"].values():
            assert 0 <= metrics["inbox_attribution"] <= 1 and np.isfinite(metrics["relative_completeness_delta"])
        return
    if name == "clustering":
        assert 0 <= saved["layers"]["2"]["patch_knn_balanced_accuracy"] <= 1
        assert (tmp_path / name / "arrays.npz").is_file()
        return
    assert {"AP", "AP50"} <= set(saved["layers"]["4"])
    # validation images never trained
    split = saved["split"]
    assert not set(split["val_groups"]) & set(split["train_groups"])


def test_lens_at_last_layer_is_the_model(tiny_model, tiny_cache):
    model, _ = load_yolos(ModelSpec(str(tiny_model)))
    head = DetectionHead.from_model(model).eval()
    with FeatureCache(tiny_cache) as cache:
        logits, boxes = head(torch.from_numpy(cache.read(4, "det")))
        final_logits, final_boxes = cache.final_outputs()
    assert np.abs(logits.detach().numpy() - final_logits).max() < 1e-5
    assert np.abs(boxes.detach().numpy() - final_boxes).max() < 1e-5
    result = run_analyzer("lens", tiny_cache, "-1")
    assert result.layers[4]["kl_to_final"] == pytest.approx(0, abs=1e-6)
    assert result.layers[4]["box_iou_to_final"] in (None, pytest.approx(1, abs=1e-5))


def test_tuned_lens_starts_as_the_lens(tiny_model, tiny_cache):
    model, _ = load_yolos(ModelSpec(str(tiny_model)))
    head = DetectionHead.from_model(model).eval()
    tuned = TunedLens(DetectionHead.from_model(model), model.config.hidden_size).eval()
    with FeatureCache(tiny_cache) as cache:
        tokens = torch.from_numpy(cache.read(2, "det"))
    for a, b in zip(head(tokens), tuned(tokens)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _write_linear_world_cache(path, shuffle: bool, n=90, n_det=3, dim=16, seed=0):
    """A cache whose det token 0 carries logit(box) and an object flag through a fixed linear map."""
    rng = np.random.default_rng(seed)
    cxcywh = np.column_stack(
        [rng.uniform(0.3, 0.7, n), rng.uniform(0.3, 0.7, n), rng.uniform(0.1, 0.3, n), rng.uniform(0.2, 0.4, n)]
    )
    mixing = rng.normal(size=(5, dim))
    tokens = rng.normal(scale=0.05, size=(n, n_det, dim))
    latent = np.column_stack([np.log(cxcywh / (1 - cxcywh)), np.ones(n)])
    tokens[:, 0] += latent @ mixing
    tokens[:, 1:] += (
        np.column_stack([rng.normal(size=(n * (n_det - 1), 4)), -np.ones(n * (n_det - 1))]).reshape(n, n_det - 1, 5)
        @ mixing
    )
    if shuffle:
        tokens = tokens[rng.permutation(n)]
    size = 100
    xywh = np.column_stack(
        [
            (cxcywh[:, 0] - cxcywh[:, 2] / 2) * size,
            (cxcywh[:, 1] - cxcywh[:, 3] / 2) * size,
            cxcywh[:, 2] * size,
            cxcywh[:, 3] * size,
        ]
    ).astype(np.float32)
    return write_cache_by_hand(
        path, TokenLayout(n_det, 0, 0), dim, xywh, {"det": tokens.astype(np.float32)}, size, images_per_sequence=10
    )


def test_linear_probe_finds_a_linear_world_and_fails_on_shuffled_features(tmp_path):
    good = run_analyzer(
        "probe-linear", _write_linear_world_cache(tmp_path / "good.h5", False), "1", epochs=150, lr=1e-2
    )
    bad = run_analyzer("probe-linear", _write_linear_world_cache(tmp_path / "bad.h5", True), "1", epochs=150, lr=1e-2)
    assert good.layers[1]["AP50"] > 0.9
    assert bad.layers[1]["AP50"] < 0.5


@pytest.mark.parametrize("name", ANALYZERS)
def test_unknown_option_and_foreign_layer_are_refused(name, tiny_cache):
    with pytest.raises(ValueError, match=f"analyzer {name}: .*no_such_option"):
        run_analyzer(name, tiny_cache, "2", no_such_option=1)
    with pytest.raises(ValueError, match=r"layers \[9\] are not in the cache|layer"):
        run_analyzer(name, tiny_cache, "9", **FAST.get(name, {}))


def test_bad_input_errors(tiny_model, synth_dir, tiny_cache, tmp_path):
    with pytest.raises(ValueError, match="unknown analyzer 'nope'"):
        run_analyzer("nope", tiny_cache, "all")
    det_only = write_tiny_cache(tiny_model, synth_dir, tmp_path / "d.h5", layers="2", batch_size=8)
    with pytest.raises(ValueError, match=r"layers \[4\] are not in the cache"):
        run_analyzer("lens", det_only, "4")
    with pytest.raises(ValueError, match="no patch tokens cached"):
        run_analyzer("probe-dense", det_only, "2", epochs=1)
    with pytest.raises(ValueError, match="unknown option 'epochz'"):
        run_analyzer("probe-mlp", det_only, "2", epochz=1)
    with pytest.raises(ValueError, match="no attention maps cached"):
        run_analyzer("rollout", det_only, "2")


def test_cli_list_and_run(tiny_cache, tmp_path):
    listed = CliRunner().invoke(cli, ["analyze", "--list"])
    assert listed.exit_code == 0 and "probe-dense" in listed.output
    ran = CliRunner().invoke(
        cli, ["analyze", "lens", "--cache", str(tiny_cache), "--layers", "1-2", "--out", str(tmp_path / "lens")]
    )
    assert ran.exit_code == 0, ran.output
    saved = json.loads((tmp_path / "lens/result.json").read_text())
    assert saved["layers"].keys() == {"1", "2"}
    assert saved["command"] == f"probe-kit analyze lens --cache {tiny_cache} --layers 1-2 --seed 0"


def test_clustering_umap_embeddings_and_pca_reference(tiny_cache):
    from sklearn.decomposition import PCA

    result = run_analyzer("clustering", tiny_cache, "4", max_points=150)
    umap_points = result.arrays["patch_umap_L4"]
    assert umap_points.shape[1] == 2 and np.isfinite(umap_points).all()
    assert len(umap_points) == len(result.arrays["patch_labels"])
    # explained variance agrees with scikit-learn run directly on all patch tokens of the cache's
    # training part, within sampling noise
    with FeatureCache(tiny_cache) as cache:
        tokens = cache.read(4, "patch").reshape(-1, cache.read(4, "patch").shape[-1])
    direct = PCA(2).fit(tokens).explained_variance_ratio_.sum()
    assert abs(result.layers[4]["patch_pca2_explained"] - direct) < 0.15


def test_forward_to_layer_is_hidden_states(tiny_model):
    from probe_kit.models.layers import forward_to_layer

    model, _ = load_yolos(ModelSpec(str(tiny_model)))
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        states = model(pixel_values=pixels, output_hidden_states=True).hidden_states
        for layer in range(5):
            torch.testing.assert_close(forward_to_layer(model, pixels, layer), states[layer])


def test_mid_position_embeddings_are_interpolated_up_to_the_next_stop_only_and_bit_for_bit(tiny_model):
    from probe_kit.models.layers import embed

    model, _ = load_yolos(ModelSpec(str(tiny_model)))  # 4 blocks: rows 0..2 feed blocks 2..4
    pixels = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        every = model.vit.encoder.interpolation((64, 96))  # what the model's own forward adds
        whole = embed(model, pixels)[1]
        assert all(torch.equal(whole[row], every[row]) for row in range(3)) and whole.done == 3
        mid = embed(model, pixels, stops=(2, 3))[1]  # images may leave after blocks 2 and 3
        assert mid.done == 0  # nothing before a block needs it
        assert torch.equal(mid[0], every[0]) and mid.done == 1  # up to the stop at block 2
        assert torch.equal(mid[1], every[1]) and mid.done == 2
        assert torch.equal(mid[2], every[2]) and mid.done == 3
        assert torch.equal(mid[0], every[0])  # earlier slices stay readable
        with pytest.raises(IndexError):
            mid[3]


def test_attribution_completeness_with_enough_steps(tiny_cache):
    """Integrated Gradients' completeness: attributions sum to F(x) - F(baseline) as steps grow."""
    coarse = run_analyzer("attribution", tiny_cache, "2", images=1, steps=4)
    fine = run_analyzer("attribution", tiny_cache, "2", images=1, steps=64)
    assert fine.layers[2]["relative_completeness_delta"] < 0.1
    assert fine.layers[2]["relative_completeness_delta"] < coarse.layers[2]["relative_completeness_delta"]


def test_clustering_tsne_places_the_points_and_leaves_the_numbers_as_with_pca(tiny_cache):
    """t-SNE only draws: with it, silhouette and k-NN are those of the PCA-only run for the same seed; the
    embedding is reproducible from the seed, and a perplexity out of range is refused before any work."""
    plain = run_analyzer("clustering", tiny_cache, "4", umap=False, max_points=150)
    drawn = run_analyzer("clustering", tiny_cache, "4", umap=False, tsne=True, perplexity=10, max_points=150)
    again = run_analyzer("clustering", tiny_cache, "4", umap=False, tsne=True, perplexity=10, max_points=150)
    assert drawn.layers == plain.layers  # the same silhouette, k-NN and explained variance
    points = drawn.arrays["patch_tsne_L4"]
    assert points.shape == (len(drawn.arrays["patch_labels"]), 2) and np.isfinite(points).all()
    np.testing.assert_array_equal(points, again.arrays["patch_tsne_L4"])
    assert "patch_tsne_L4" not in plain.arrays and drawn.options["perplexity"] == 10
    with pytest.raises(ValueError, match="perplexity"):
        run_analyzer("clustering", tiny_cache, "4", tsne=True, perplexity=500)
