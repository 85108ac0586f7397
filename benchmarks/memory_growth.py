"""Peak memory and throughput of each cache-reading stage at two dataset sizes: memory should be flat in the number
of images (ratio of peak RSS, large over small, at most 1.3) and time per image no worse at the larger size.

Synthetic scenes rendered and cached by the reference model at ``--size`` px (det + patch tokens); every stage runs
in its own process (``python -m probe_kit ...``), whose peak RSS (``ru_maxrss``) it reports itself. Scenes are split
into sequences of 20 frames, so the held-out and validation splits grow with the dataset as in a real study.

    python benchmarks/memory_growth.py [--small 50] [--large 400] [--size 384] [--layer 6] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Runs a probe-kit command line in this process and prints its peak RSS (MiB) and wall time as JSON on stdout.
_MEASURED = """
import json, resource, sys, time
from probe_kit.cli.main import cli
start = time.monotonic()
try:
    cli.main(sys.argv[1:], prog_name="probe-kit", standalone_mode=False)
finally:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mib": peak, "seconds": time.monotonic() - start}), file=sys.__stdout__)
"""


def _stages(cache: Path, out: Path, layer: int, epochs: int) -> dict[str, list[str]]:
    layers = ["--layers", str(layer)]
    return {
        "analyze probe-dense": ["analyze", "probe-dense", "--cache", str(cache), *layers, "-o", f"epochs={epochs}"],
        "train-exits --head dense": [
            "train-exits",
            "--head",
            "dense",
            "--cache",
            str(cache),
            *layers,
            "--epochs",
            str(epochs),
        ],
        "train-exits (det)": ["train-exits", "--cache", str(cache), *layers, "--epochs", str(epochs)],
        "analyze tuned-lens": ["analyze", "tuned-lens", "--cache", str(cache), *layers, "-o", f"epochs={epochs}"],
        "analyze probe-mlp": ["analyze", "probe-mlp", "--cache", str(cache), *layers, "-o", f"epochs={epochs}"],
        "analyze clustering": ["analyze", "clustering", "--cache", str(cache), *layers, "-o", "umap=false"],
    }


def _measure(args: list[str], out: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _MEASURED, "--quiet", *args, "--out", str(out)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=50)
    parser.add_argument("--large", type=int, default=400)
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    rows: dict[str, dict[int, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for n in (args.small, args.large):
            data = tmp / f"scenes-{n}"
            synth = ["data", "synth", "--frames", str(n), "--size", str(args.size), "--frames-per-sequence", "20"]
            _measure([*synth, "--seed", "5"], data)
            cache = tmp / f"c{n}.h5"
            layers = f"{args.layer},12"
            cache_args = ["cache", "--data", f"synth:{data}", "--shortest-edge", str(args.size), "--layers", layers]
            rows.setdefault("cache (det + patch)", {})[n] = _measure([*cache_args, "--tokens", "det,patch"], cache)
            for name, stage in _stages(cache, tmp, args.layer, args.epochs).items():
                rows.setdefault(name, {})[n] = _measure(stage, tmp / f"{name.replace(' ', '_')}-{n}")
    print(
        f"peak RSS (MiB) and images/s at {args.small} and {args.large} synthetic scenes, {args.size} px, layer "
        f"{args.layer}, {args.epochs} epochs; target: RSS ratio <= 1.3 ({time.strftime('%Y-%m-%d')})"
    )
    print(f"{'stage':28s} {args.small:>8d} {args.large:>8d} {'ratio':>6s} {'img/s':>8s} {'img/s':>8s}")
    for name, by_size in rows.items():
        small, large = by_size[args.small], by_size[args.large]
        ratio = large["peak_mib"] / small["peak_mib"]
        print(
            f"{name:28s} {small['peak_mib']:8.0f} {large['peak_mib']:8.0f} {ratio:6.2f} "
            f"{args.small / small['seconds']:8.1f} {args.large / large['seconds']:8.1f}"
            + ("" if ratio <= 1.3 else "  (over 1.3)")
        )


if __name__ == "__main__":
    main()
