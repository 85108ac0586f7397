"""``probe-kit decide --results DIR [--bars 3:0.30,6:0.50,9:0.70]``: recommend exits from the analyzers' results."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from probe_kit.cli.outputs import DECISION, file_out, guarded


@click.command("decide")
@click.option(
    "--results",
    "results_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder holding <analyzer>/result.json files.",
)
@click.option(
    "--bars",
    default=None,
    metavar="LAYER:AP50,...|FILE",
    help="Your minimum AP50 per exit layer, e.g. 3:0.30,6:0.50,9:0.70 (linear in between), or a YAML/JSON file "
    "{3: 0.30, ...}. Default: the original study's bars, relative to the final layer.",
)
@click.option(
    "--designs",
    "designs_path",
    type=click.Path(path_type=Path),
    default=None,
    help="An evaluate-exits result.json with a `designs` comparison: also recommend a design and operating point.",
)
@click.option(
    "--max-ap50-loss",
    type=float,
    default=None,
    help="AP50 you accept to lose for speed, absolute (default 0.01: one point); YAML decision: max_ap50_loss.",
)
@click.option(
    "--min-speedup",
    type=click.FloatRange(min=1.0),
    default=None,
    help="With --designs: the least speed-up worth having; a setting pays when its measured speed-up's 95% interval "
    "lies above it (default 1.10); YAML decision: min_speedup.",
)
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="decision.json (default RESULTS/decision.json)"
)
def command(
    results_dir: Path,
    bars: str | None,
    designs_path: Path | None,
    max_ap50_loss: float | None,
    min_speedup: float | None,
    out: Path | None,
) -> None:
    """Print the recommended exits, the verdict and its rationale; write them as JSON."""
    from probe_kit.analyzers import analyzer_meta
    from probe_kit.decision import Criteria, decide, load_results, parse_bars
    from probe_kit.decision.design import recommend_design
    from probe_kit.io import read_json, write_json

    criteria = Criteria(bars=parse_bars(bars)) if bars else Criteria()  # errors name --bars (one line)
    if max_ap50_loss is not None:
        criteria = dataclasses.replace(criteria, max_ap50_loss=max_ap50_loss)
    if min_speedup is not None:
        criteria = dataclasses.replace(criteria, min_speedup=min_speedup)
    with guarded(file_out(out or results_dir / "decision.json", DECISION)):  # checked and locked before any work
        decision = decide(load_results(results_dir), criteria, roles=analyzer_meta())
        data = decision.to_json()
        if designs_path is not None:
            designs = read_json(designs_path, "--designs")
            data["design"] = recommend_design(designs, criteria.max_ap50_loss, criteria.min_speedup)
        path = write_json(out or results_dir / "decision.json", data)
    click.echo("\n".join(decision.rationale))
    click.echo(decision.summary)
    if designs_path is not None:
        click.echo("\n".join(data["design"]["rationale"]))
    click.echo(f"-> {path}")
