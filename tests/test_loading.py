"""Loading YOLOS through the real from_pretrained path, and the hidden-state convention."""

import pytest
import torch
from conftest import make_tiny_yolos

from probe_kit.models.loading import ModelSpec, load_yolos, person_label_index, resolve_model_path


def _pixels(seed=0, size=64):
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_hidden_states_are_raw_block_outputs_before_mid_position(tiny_model):
    """hidden_states[k] == output of block k (forward hook), *before* the mid position embedding."""
    model, _ = load_yolos(ModelSpec(str(tiny_model)))
    captured, inputs = {}, {}
    handles = []
    for k, block in enumerate(model.vit.encoder.layer, start=1):
        handles.append(block.register_forward_hook(lambda m, a, out, k=k: captured.__setitem__(k, out)))
        handles.append(block.register_forward_pre_hook(lambda m, a, k=k: inputs.__setitem__(k, a[0])))
    try:
        with torch.no_grad():
            out = model(pixel_values=_pixels(), output_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    layers = model.config.num_hidden_layers
    assert len(out.hidden_states) == layers + 1
    torch.testing.assert_close(out.hidden_states[0], inputs[1])  # embeddings feed block 1
    for k in range(1, layers + 1):
        torch.testing.assert_close(out.hidden_states[k], captured[k], rtol=0, atol=0)
    # the next block sees hidden_states[k] + mid position embedding, which is not zero
    assert not torch.allclose(out.hidden_states[1], inputs[2])
    # no intermediate state is layer-normed: the final head input is layernorm(hidden_states[L])
    torch.testing.assert_close(model.vit.layernorm(out.hidden_states[layers]), out.last_hidden_state)


def test_attentions_are_returned(tiny_model):
    model, _ = load_yolos(ModelSpec(str(tiny_model)))
    with torch.no_grad():
        out = model(pixel_values=_pixels(), output_attentions=True)
    assert len(out.attentions) == model.config.num_hidden_layers
    tokens = 1 + 16 + model.config.num_detection_tokens
    assert out.attentions[0].shape == (2, 2, tokens, tokens)


def test_seeded_detection_tokens_differ(tiny_model):
    model, _ = load_yolos(ModelSpec(str(tiny_model)))
    tokens = model.vit.embeddings.detection_tokens[0]
    assert torch.cdist(tokens, tokens).fill_diagonal_(1).min() > 0
    assert model.vit.embeddings.position_embeddings.abs().sum() > 0


def test_shortest_edge_override(tiny_model):
    _, processor = load_yolos(ModelSpec(str(tiny_model), shortest_edge=96))
    assert processor.size["shortest_edge"] == 96


def test_person_label_comes_from_id2label(tmp_path):
    folder = make_tiny_yolos(tmp_path / "coco_like", labels={0: "N/A", 1: "person", 2: "bicycle"})
    model, _ = load_yolos(ModelSpec(str(folder)))
    assert person_label_index(model.config) == 1


def test_offline_hub_id_gives_one_clear_error():
    with pytest.raises(ValueError, match="could not load this hub id.*Download it first"):
        load_yolos(ModelSpec("hustvl/yolos-small-does-not-exist"))


def test_reference_name_resolves_to_the_shipped_folder():
    path = resolve_model_path("reference")
    assert path.endswith("reference/weights")
