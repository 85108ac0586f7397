"""FLOPs as per-layer evidence: block cost and cumulative cost up to an exit at each layer."""

from __future__ import annotations

from probe_kit.analyzers._registry import AnalyzerResult, register
from probe_kit.cache.reader import FeatureCache
from probe_kit.models.flops import measure_flops
from probe_kit.training.data import load_cache_model


@register(
    "flops",
    "GFLOPs (2 x multiply-adds) per block and up to an exit at each layer, FlopCounterMode",
    role="cost",
    metrics={"gflops_to_exit": "GFLOPs to exit", "fraction_of_full": "share of the full model's GFLOPs"},
)
def run_flops(cache: FeatureCache, layers: tuple[int, ...], seed: int = 0, device: str = "cpu") -> AnalyzerResult:
    sizes = {tuple(int(v) for v in row) for row in cache.input_sizes()}
    width, height = max(sizes, key=lambda s: s[0] * s[1])  # the largest input of the cache, if they differ
    profile = measure_flops(load_cache_model(cache, device), (width, height))
    per_layer = {
        layer: {
            "gflops_block": profile.blocks[layer - 1] if layer else profile.embeddings,
            "gflops_to_exit": profile.to_exit(layer),
            "fraction_of_full": profile.to_exit(layer) / profile.full,
        }
        for layer in layers
    }
    return AnalyzerResult(
        "flops",
        {},
        seed,
        per_layer,
        cache.fingerprint,
        extra={"profile": profile.to_json(), "full_gflops": profile.full},
    )
