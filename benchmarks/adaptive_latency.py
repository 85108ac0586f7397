"""Measured latency of static exits and adaptive exiting versus the FLOPs prediction, batch 1, two runs.

Each run is one ``evaluate_exits`` (held-out images only): the full model, every static exit and
the operating point are timed in interleaved rounds with ``torch.utils.benchmark`` (median and IQR
per image, see ``probe_kit/models/timing.py``). Printed per setting: both runs' medians and their
difference (target: within 15%), both runs' measured speed-ups (ratios of medians timed in the
same rounds, so a change of the host's speed between the runs cancels out) and each static exit's
measured speed-up over the FLOPs-predicted one (target: within 25%). A speed-up whose per-round IQR
holds 1 is printed as no measurable difference.

    python benchmarks/adaptive_latency.py --exits runs/demo/exits --data synth:runs/demo/data [--threads 1]
"""

from __future__ import annotations

import argparse


def main() -> None:
    from probe_kit.data.spec import parse_data_spec
    from probe_kit.heads.evaluate import evaluate_exits, summary_lines
    from probe_kit.heads.pipeline import Timing
    from probe_kit.models.timing import describe_speedup

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exits", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--sequences", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images", type=int, default=16, help="held-out images timed per setting")
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds per run")
    args = parser.parse_args()
    sequences = tuple(args.sequences.split(",")) if args.sequences else None
    spec = parse_data_spec(args.data, sequences=sequences)
    timing = Timing(images=args.images, repeats=args.repeats, threads=args.threads)
    runs = [evaluate_exits(args.exits, spec, device=args.device, timing=timing, progress=False) for _ in range(2)]
    print("\n".join(summary_lines(runs[0])))

    def rows(result: dict) -> dict[str, dict]:
        return {"full model": result["full_model"], **{f"exit {k}": v for k, v in result["exits"].items()}}

    print("\nrun-to-run agreement of the medians (target: within 15%)")
    first, second = rows(runs[0]), rows(runs[1])
    first["operating point"], second["operating point"] = runs[0]["operating_point"], runs[1]["operating_point"]
    for name in first:
        a, b = first[name]["latency"]["median_ms"], second[name]["latency"]["median_ms"]
        print(f"{name:<16} run 1 {a:8.2f} ms  run 2 {b:8.2f} ms  difference {abs(a - b) / min(a, b):6.1%}")
    print("\nrun-to-run agreement of the measured speed-ups over the full model")
    for name in list(first)[1:]:
        a, b = (row[name]["measured_speedup"]["ratio"] for row in (first, second))
        print(f"{name:<16} run 1 {a:6.2f}x  run 2 {b:6.2f}x  difference {abs(a - b) / min(a, b):6.1%}")
    print("\nstatic exits: measured speed-up / FLOPs-predicted (target: within 25% of 1)")
    for run, result in enumerate(runs, start=1):
        for layer, row in result["exits"].items():
            measured = row["measured_speedup"]
            print(
                f"run {run} exit {layer:>2}: FLOPs {row['flops_speedup']:.2f}x  "
                f"measured: {describe_speedup(measured)}  "
                f"measured/predicted {measured['ratio'] / row['flops_speedup']:.2f}"
            )


if __name__ == "__main__":
    main()
