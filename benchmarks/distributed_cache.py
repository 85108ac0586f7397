"""Sharded extraction: images/s of `probe-kit cache` with 1 and with 2 torchrun processes, as a ratio in one run.

Both runs launch through torchrun (so both pay the same start-up, which is not timed), one thread per
process (torchrun's default for several processes; set for the single one too), the shipped reference
model over the same synthetic scenes. Each worker times the extraction itself between two barriers
(model loading and the data hash included, as a user pays them; interpreter start-up excluded) and
the joined virtual-dataset file is checked equal, dataset by dataset, to the single-process cache.
On a machine shared with other work the ratio is noisy: run it twice and quote both.

    python benchmarks/distributed_cache.py [--images 96] [--batch-size 8] [--processes 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _worker(data: Path, out: Path, batch_size: int, timing: Path) -> None:
    """Runs in each torchrun process: extract (sharded when several), rank 0 writes the wall time."""
    from probe_kit import distributed
    from probe_kit.cache.shards import cache_dataset
    from probe_kit.data.spec import parse_data_spec
    from probe_kit.models.loading import ModelSpec

    with distributed.session():
        distributed.barrier()
        start = time.perf_counter()
        cache_dataset(
            out,
            progress=False,
            model_spec=ModelSpec("reference"),
            data_spec=parse_data_spec(f"synth:{data}"),
            layers="all",
            tokens=["det", "patch"],
            batch_size=batch_size,
        )
        distributed.barrier()
        if distributed.is_main():
            timing.write_text(json.dumps({"seconds": time.perf_counter() - start}))


def _launch(processes: int, data: Path, out: Path, batch_size: int) -> float:
    timing = out.with_suffix(".json")
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", f"--nproc-per-node={processes}", __file__, "--worker"]
    command += ["--data", str(data), "--out", str(out), "--batch-size", str(batch_size), "--timing", str(timing)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run(command, check=True, env=env, capture_output=True)
    return json.loads(timing.read_text())["seconds"]


def _same(a: Path, b: Path) -> bool:
    import h5py
    import numpy as np

    with h5py.File(a, "r") as x, h5py.File(b, "r") as y:
        names: list[str] = []
        x.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        return all(np.array_equal(x[n][()], y[n][()]) for n in names if x[n].dtype.kind != "O") and all(
            all(np.array_equal(p, q) for p, q in zip(x[n][()], y[n][()])) for n in names if x[n].dtype.kind == "O"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--timing", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.data, args.out, args.batch_size, args.timing)
        return
    from probe_kit.data.synth import write_synth_dataset

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_synth_dataset(folder / "scenes", frames=args.images, seed=0, progress=False)
        one = _launch(1, folder / "scenes", folder / "one.h5", args.batch_size)
        many = _launch(args.processes, folder / "scenes", folder / "many.h5", args.batch_size)
        equal = _same(folder / "one.h5", folder / "many.h5")
    print(f"{args.images} images, reference model, tokens det+patch, batch {args.batch_size}, 1 thread per process")
    print(f"1 process:  {args.images / one:7.1f} img/s ({one:.1f} s)")
    print(f"{args.processes} processes: {args.images / many:7.1f} img/s ({many:.1f} s)")
    print(f"speed-up {one / many:.2f}x with {args.processes} processes; sharded cache equal to one-process: {equal}")


if __name__ == "__main__":
    main()
