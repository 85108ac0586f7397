"""Time per epoch of joint training (every block and every exit's loss, on live images) against frozen heads (on
cached tokens), on the reference model, in one run: what the joint regime costs per epoch.

Synthetic scenes cached by the reference model; exits 3/6/9/12. The frozen run trains the heads for ``--epochs``
epochs on the cache; the joint run does the same and then ``--epochs`` live epochs, so its extra time divided by
the epochs is one joint epoch (its holdout AP50 scoring included).

    python benchmarks/joint_epoch_time.py [--frames 120] [--epochs 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    from probe_kit.cache.writer import write_cache
    from probe_kit.data.spec import parse_data_spec
    from probe_kit.data.synth import write_synth_dataset
    from probe_kit.heads.options import ExitTraining
    from probe_kit.heads.training import train_exits
    from probe_kit.models.loading import ModelSpec

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_synth_dataset(tmp / "scenes", args.frames, seed=5, frames_per_sequence=20, progress=False)
        cache = write_cache(
            ModelSpec("reference"),
            parse_data_spec(f"synth:{tmp / 'scenes'}"),
            "3,6,9,12",
            ["det"],
            tmp / "c.h5",
            progress=False,
        )
        seconds = {}
        for regime in ("frozen", "joint"):
            opts = ExitTraining(epochs=args.epochs, finetune_epochs=args.epochs, finetune_lr=1e-4, regime=regime)
            start = time.monotonic()
            train_exits(cache, (3, 6, 9, 12), tmp / regime, "det", 0, opts, progress=False)
            seconds[regime] = time.monotonic() - start
    frozen_epoch = seconds["frozen"] / args.epochs
    joint_epoch = (seconds["joint"] - seconds["frozen"]) / args.epochs
    print(
        f"{args.frames} synthetic scenes, reference model, exits 3/6/9/12, {args.epochs} epochs each "
        f"({time.strftime('%Y-%m-%d')})"
    )
    print(f"frozen heads (cached tokens): {frozen_epoch:.2f} s per epoch")
    print(f"joint (all 12 blocks, live images, holdout AP50 per epoch): {joint_epoch:.2f} s per epoch")
    print(f"ratio joint / frozen: {joint_epoch / frozen_epoch:.1f}x")


if __name__ == "__main__":
    main()
