"""FLOP counting against the analytic count of a ViT block (attention matmuls included)."""

import pytest

from probe_kit.models.flops import measure_flops
from probe_kit.models.loading import ModelSpec, load_yolos


def test_blocks_match_the_analytic_formula_with_attention(tiny_model):
    model, _ = load_yolos(ModelSpec(str(tiny_model)))
    profile = measure_flops(model, (64, 64))
    c = model.config
    tokens = 1 + (64 // 16) ** 2 + c.num_detection_tokens
    d, inner = c.hidden_size, c.intermediate_size
    projections = 2 * tokens * d * d * 4  # q, k, v and output projections
    attention = 2 * tokens * tokens * d * 2  # Q K^T and A V, summed over heads
    mlp = 2 * tokens * d * inner * 2
    for block in profile.blocks:
        assert block * 1e9 == pytest.approx(projections + attention + mlp)
    assert profile.to_exit(4) == pytest.approx(profile.full)
    assert profile.to_exit(1) < profile.to_exit(2) < profile.full
    det_head = 2 * c.num_detection_tokens * (d * d * 2 + d * (c.num_labels + 1) + d * d * 2 + d * 4)
    assert profile.head * 1e9 == pytest.approx(det_head)


def test_sdpa_is_refused(tiny_model):
    from transformers import YolosForObjectDetection

    model = YolosForObjectDetection.from_pretrained(tiny_model, attn_implementation="sdpa")
    with pytest.raises(ValueError, match="eager attention"):
        measure_flops(model, (64, 64))
