"""``probe-kit report --results DIR [--out reports/NAME.html] [--open]``; ``probe-kit report --compare DIR DIR ...``."""

from __future__ import annotations

from pathlib import Path

import click

from probe_kit.cli.outputs import REPORT, file_out, guarded


@click.command("report")
@click.option(
    "--results",
    "results_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="A study folder (probe-kit run/demo) or a folder of <analyzer>/result.json.",
)
@click.option(
    "--compare",
    is_flag=True,
    help="Compare two or more study folders (given as arguments) on the same curves: --compare RUN_DIR RUN_DIR ...",
)
@click.argument("runs", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="HTML file (default reports/NAME.html, or reports/compare-A-B.html).",
)
@click.option("--open", "open_browser", is_flag=True, help="Open the report in the default browser.")
@click.option("--strict", is_flag=True, help="Exit 1, writing nothing, when the study has stages not measured yet.")
def command(
    results_dir: Path | None,
    compare: bool,
    runs: tuple[Path, ...],
    out: Path | None,
    open_browser: bool,
    strict: bool,
) -> None:
    """Render a single self-contained HTML feasibility report (or a comparison of studies)."""
    from probe_kit import api
    from probe_kit.report import build_comparison

    if compare:
        if results_dir is not None:
            raise ValueError("--compare takes the study folders as arguments; leave out --results")
        missing = [str(r) for r in runs if not r.is_dir()]
        if missing:
            raise ValueError(f"--compare: {missing[0]}: no such study folder")
        target = out or Path("reports") / f"compare-{'-'.join(r.resolve().name for r in runs)}.html"
        with guarded(file_out(target, REPORT)):  # checked and locked before any work
            path = build_comparison(list(runs), Path(target))
    else:
        if runs:
            raise ValueError(f"unexpected argument {str(runs[0])!r}: use --results DIR, or --compare DIR DIR ...")
        if results_dir is None:
            raise ValueError("--results: missing; give a study folder (or --compare DIR DIR ...)")
        target = out or Path("reports") / f"{results_dir.resolve().name}.html"
        with guarded(file_out(target, REPORT)):  # checked and locked before any work
            path = api.build_report(results_dir, target, strict)
        missing = api.missing_stages(results_dir)
        if missing:
            click.echo(f"not measured yet (see the report's last section): {', '.join(missing)}", err=True)
    click.echo(f"report written to {path.resolve()}")
    if open_browser:
        import webbrowser

        if not webbrowser.open(path.resolve().as_uri()):
            click.echo(f"no browser could be opened here; open {path.resolve().as_uri()} yourself")
