"""Extraction throughput of `probe-kit cache` versus a bare forward pass, and bytes per image.

A yolos-small-sized random model (hidden 384, 12 blocks, 6 heads, 100 det tokens) at 512x512 on
the CPU, over the same synthetic images and batches in the same run. Prints ratios; the target is
that caching adds at most 10% over the bare forward pass.

    python benchmarks/cache_throughput.py [--images 16] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def _make_model(folder: Path) -> Path:
    from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessorPil

    from probe_kit.models.loading import seed_token_embeddings

    config = YolosConfig(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        intermediate_size=1536,
        image_size=[512, 864],
        num_detection_tokens=100,
        id2label={0: "person"},
        label2id={"person": 0},
    )
    model = YolosForObjectDetection(config)
    seed_token_embeddings(model, 0)
    model.save_pretrained(folder)
    YolosImageProcessorPil(size={"shortest_edge": 512, "longest_edge": 864}).save_pretrained(folder)
    return folder


def main() -> None:
    from probe_kit.cache.writer import write_cache
    from probe_kit.data.spec import parse_data_spec
    from probe_kit.data.synth import SceneSpec, write_synth_dataset
    from probe_kit.models.loading import ModelSpec, load_yolos
    from probe_kit.models.runner import run_batches

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = _make_model(tmp / "model")
        write_synth_dataset(tmp / "data", args.images, seed=0, spec=SceneSpec(512, 512), progress=False)
        data = parse_data_spec(f"synth:{tmp / 'data'}")
        samples = data.load()
        spec = ModelSpec(str(model_dir))
        model, processor = load_yolos(spec)

        next(run_batches(model, processor, samples[: args.batch_size], args.batch_size))  # warm-up
        start = time.perf_counter()  # baseline: decode + preprocess + forward, nothing kept
        for _ in run_batches(model, processor, samples, args.batch_size):
            pass
        bare = time.perf_counter() - start
        start = time.perf_counter()
        load_yolos(spec)
        loading = time.perf_counter() - start

        timings, sizes = {}, {}
        for name, tokens in (("det", ["det"]), ("all", ["det", "patch", "cls"])):
            out = tmp / f"{name}.h5"
            start = time.perf_counter()
            write_cache(spec, data, "all", tokens, out, batch_size=args.batch_size, progress=False)
            timings[name] = time.perf_counter() - start - loading  # the writer loads the model itself
            sizes[name] = out.stat().st_size / args.images  # includes chunk padding on small runs
    print(f"images: {args.images} at 512x512, batch {args.batch_size}, torch threads {torch.get_num_threads()}")
    print(f"bare forward:        {args.images / bare:6.2f} img/s")
    for name in ("det", "all"):
        print(
            f"cache ({name:>3} tokens): {args.images / timings[name]:6.2f} img/s  "
            f"time ratio vs bare {timings[name] / bare:.3f}  ({sizes[name] / 2**20:.2f} MiB/image)"
        )
    print(f"bytes per image, all tokens / det only: {sizes['all'] / sizes['det']:.1f}x")


if __name__ == "__main__":
    main()
