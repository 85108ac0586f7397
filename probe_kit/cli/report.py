"""``probe-kit report --results DIR [--out reports/NAME.html] [--open]``."""

from __future__ import annotations

from pathlib import Path

import click

from probe_kit.cli.outputs import checked, file_out


@click.command("report")
@click.option(
    "--results",
    "results_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="A study folder (probe-kit run/demo) or a folder of <analyzer>/result.json.",
)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="HTML file (default reports/NAME.html).")
@click.option("--open", "open_browser", is_flag=True, help="Open the report in the default browser.")
def command(results_dir: Path, out: Path | None, open_browser: bool) -> None:
    """Render a single self-contained HTML feasibility report."""
    from probe_kit.report import build_report

    target = checked(file_out(out or Path("reports") / f"{results_dir.resolve().name}.html"))  # before any work
    path = build_report(results_dir, target)
    click.echo(f"report -> {path}")
    if open_browser:
        click.launch(str(path.resolve()))
