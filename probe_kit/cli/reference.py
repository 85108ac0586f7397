"""``probe-kit reference``: train the reference model, export it into the package."""

from __future__ import annotations

from pathlib import Path

import click

from probe_kit.cli.options import Device
from probe_kit.cli.outputs import RESUMABLE, check_outputs, dir_out, locked
from probe_kit.models import EMBEDDED_MODELS, REFERENCE_NAME


@click.group("reference")
def command() -> None:
    """The shipped reference YOLOS: its training recipe and export."""


@command.command("train")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Recipe YAML (default: the recipe in experiments/reference_model.yaml, built in).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("runs/reference"),
    show_default=True,
    help="Run folder (last.pt, best/); an interrupted run there resumes.",
)
@click.option("--budget-minutes", type=float, default=None, help="Stop (resumably) after this many minutes.")
@click.option(
    "--device",
    type=Device(),
    default="cpu",
    show_default=True,
    help="Where to train (e.g. cuda); not part of the recipe.",
)
def train(config_path: Path | None, out: Path, budget_minutes: float | None, device: str) -> None:
    """Train from scratch on synthetic scenes, or resume from OUT/last.pt."""
    from probe_kit import distributed
    from probe_kit.reference.recipe import RecipeConfig, train_reference

    cfg = RecipeConfig.from_yaml(config_path) if config_path else RecipeConfig()
    with locked(dir_out(out, RESUMABLE)):  # checked before any training; one writer per folder
        summary = train_reference(cfg, out, budget_minutes, device=device)  # under torchrun: DDP, rank 0 writes
    if not distributed.is_main():
        return
    if summary["best_AP50"] < 0:  # stopped by the budget before the first held-out evaluation
        click.echo(
            f"step {summary['step']}: stopped before the first held-out evaluation (every {cfg.eval_every} steps), "
            f"so there is no best checkpoint yet; rerun the same command to resume from {out / 'last.pt'}"
        )
        return
    click.echo(f"step {summary['step']}: best held-out AP50 {summary['best_AP50']:.4f} -> {out / 'best'}")


@command.command("export")
@click.option(
    "--run",
    "run_dir",
    type=click.Path(path_type=Path),
    default=Path("runs/reference"),
    show_default=True,
    help="Run folder of `probe-kit reference train`; its best/ is exported.",
)
@click.option(
    "--heldout",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder for the held-out synthetic set (written if absent).",
)
@click.option(
    "--as",
    "name",
    type=click.Choice(sorted(EMBEDDED_MODELS)),
    default=REFERENCE_NAME,
    show_default=True,
    help="Which embedded model the checkpoint becomes (shallow-reference: experiments/shallow_reference.yaml).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="The run's recipe YAML (its held-out set settings); default: the reference recipe.",
)
def export(run_dir: Path, heldout: Path, name: str, config_path: Path | None) -> None:
    """Copy OUT/best into the package and record its held-out metrics through the real evaluate path."""
    from probe_kit import distributed
    from probe_kit.reference.export import export_reference
    from probe_kit.reference.recipe import RecipeConfig

    cfg = RecipeConfig.from_yaml(config_path) if config_path else RecipeConfig()
    check_outputs(dir_out(heldout, RESUMABLE, "--heldout"))
    metrics = distributed.on_rank_zero(lambda: export_reference(run_dir, heldout, cfg, name))
    if not distributed.is_main():
        return
    click.echo(f"exported: held-out AP {metrics['AP']:.4f}  AP50 {metrics['AP50']:.4f}")
