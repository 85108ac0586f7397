"""Measured latency speed-up of adaptive exiting versus the FLOPs-predicted one, batch 1, CPU.

Both come from one evaluate-exits run: the full model and every policy threshold are timed in the
same process on the same images. The operating point is the threshold with the fewest GFLOPs
whose AP stays within 1 point of the full model. Target: measured / predicted >= 0.8.

    python benchmarks/adaptive_latency.py --exits runs/demo/exits --data synth:runs/demo/data [--sequences ...]
"""

from __future__ import annotations

import argparse


def main() -> None:
    from probe_kit.data.spec import parse_data_spec
    from probe_kit.heads.evaluate import evaluate_exits

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exits", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--sequences", default=None)
    args = parser.parse_args()
    sequences = tuple(args.sequences.split(",")) if args.sequences else None
    result = evaluate_exits(args.exits, parse_data_spec(args.data, sequences=sequences), progress=False)
    full, point = result["full_model"], result["operating_point"]
    print(f"full model:      AP {full['AP']:.4f}  {full['gflops']:.3f} GFLOPs  {full['mean_latency_ms']:.2f} ms/img")
    for row in result["sweep"]:
        print(
            f"threshold {row['threshold']:<6} AP {row['AP']:.4f}  {row['mean_gflops']:.3f} GFLOPs  "
            f"{row['mean_latency_ms']:.2f} ms/img  exits {row['exit_histogram']}"
        )
    ratio = point["measured_speedup"] / point["flops_speedup"]
    print(f"operating point: threshold {point['threshold']} (AP within 1 point: {point['within_tolerance']})")
    print(
        f"speed-up: FLOPs-predicted {point['flops_speedup']:.2f}x, measured {point['measured_speedup']:.2f}x, "
        f"measured/predicted {ratio:.2f} (target >= 0.8)"
    )


if __name__ == "__main__":
    main()
