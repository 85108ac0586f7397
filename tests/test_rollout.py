"""Attention rollout against a hand-computed toy and a slow reference loop."""

import itertools

import pytest
import torch

from probe_kit.analyzers.rollout import attention_rollout
from probe_kit.ops.rollout import rollout_layers


def _reference(attentions, head_fusion, discard_ratio):
    """Slow, literal version: loops over batch elements and rows."""
    out = []
    for b in range(attentions[0].shape[0]):
        rolled = None
        for attention in attentions:
            a = attention[b].double()
            fused = {"mean": a.mean(0), "max": a.max(0).values, "min": a.min(0).values}[head_fusion].clone()
            tokens = fused.shape[0]
            for row in range(tokens):
                candidates = sorted((fused[row, col].item(), col) for col in range(tokens) if col != row)
                for _, col in candidates[: int(tokens * discard_ratio)]:
                    fused[row, col] = 0.0
            fused = fused + torch.eye(tokens, dtype=torch.float64)
            for row in range(tokens):
                fused[row] = fused[row] / fused[row].sum()
            rolled = fused if rolled is None else fused @ rolled
        out.append(rolled)
    return torch.stack(out)


def _random_attentions(batch=3, heads=2, tokens=7, layers=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(batch, heads, tokens, tokens, generator=g).softmax(-1) for _ in range(layers)]


@pytest.mark.parametrize("fusion,ratio", list(itertools.product(["mean", "max", "min"], [0.0, 0.3, 0.6])))
def test_matches_reference_loop(fusion, ratio):
    attentions = _random_attentions()
    ours = attention_rollout(attentions, head_fusion=fusion, discard_ratio=ratio)
    ref = _reference(attentions, fusion, ratio)
    assert ours.shape == (3, 7, 7)
    assert torch.allclose(ours.double(), ref, atol=1e-6)


def test_rows_sum_to_one_every_layer():
    for rolled in rollout_layers(_random_attentions(), "max", 0.5):
        torch.testing.assert_close(rolled.sum(-1), torch.ones(3, 7))


def test_two_layer_toy_by_hand():
    a1 = torch.tensor([[0.5, 0.5], [0.0, 1.0]])  # one head
    a2 = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    # A1 = rownorm(a1 + I) = [[0.75, 0.25], [0, 1]]; A2 = rownorm(a2 + I) = [[1, 0], [0.25, 0.75]]
    # R2 = A2 @ A1 = [[0.75, 0.25], [0.1875, 0.8125]]
    rolled = attention_rollout([a1[None, None], a2[None, None]])
    torch.testing.assert_close(rolled[0], torch.tensor([[0.75, 0.25], [0.1875, 0.8125]]))


def test_discard_applies_to_every_batch_element_and_keeps_the_diagonal():
    attentions = _random_attentions(batch=4, layers=1)
    rolled = attention_rollout(attentions, discard_ratio=0.5)
    zeros_per_row = (rolled == 0).sum(-1)
    assert (zeros_per_row == 3).all()  # int(7 * 0.5) entries gone in every row of every element
    assert (torch.diagonal(rolled, dim1=-2, dim2=-1) > 0).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="head_fusion"):
        attention_rollout(_random_attentions(), head_fusion="median")
    with pytest.raises(ValueError, match="discard_ratio"):
        attention_rollout(_random_attentions(), discard_ratio=1.0)
