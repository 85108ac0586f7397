"""``probe-kit decide --results DIR``: recommend exits from the analyzers' results."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("decide")
@click.option(
    "--results",
    "results_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder holding <analyzer>/result.json files.",
)
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="decision.json (default RESULTS/decision.json)"
)
def command(results_dir: Path, out: Path | None) -> None:
    """Print the recommended exits, the verdict and its rationale; write them as JSON."""
    from probe_kit.decision import decide, load_results
    from probe_kit.io import write_json

    decision = decide(load_results(results_dir))
    path = write_json(out or results_dir / "decision.json", decision.to_json())
    click.echo("\n".join(decision.rationale))
    click.echo(f"-> {path}")
