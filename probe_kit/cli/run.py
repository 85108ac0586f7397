"""``probe-kit run experiments/NAME.yaml`` and ``probe-kit demo``."""

from __future__ import annotations

from pathlib import Path

import click

from probe_kit.cli.outputs import STUDY, check_kind, dir_out, locked


@click.command("run")
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Experiment folder (default runs/NAME).")
@click.option("--open", "open_browser", is_flag=True, help="Open the report in the default browser.")
def run(config: Path, out: Path | None, open_browser: bool) -> None:
    """Run a whole study from a YAML file, skipping stages that are up to date."""
    from probe_kit import distributed
    from probe_kit.experiment import load_experiment, run_experiment

    if not config.is_file() and config.name == "demo.yaml":
        raise FileNotFoundError(f"{config}: no such file; the demo ships inside the package: run `probe-kit demo`")
    cfg = load_experiment(config)  # every config error surfaces here, before any work
    target = out or Path("runs") / cfg.name
    study = dir_out(target, STUDY)
    with locked(study):  # checked before any work; one run per study folder
        check_kind(study)  # under the lock: a study (resumed), an empty folder or nothing, never another output
        decision = run_experiment(cfg, target)  # under torchrun: the cache sharded over the processes
    if not distributed.is_main():
        return
    click.echo(f"{decision['verdict']}: exits {decision['exits']} -> {target / 'report.html'}")
    if open_browser:
        click.launch(str((target / "report.html").resolve()))


@click.command("demo")
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="Study folder (default runs/demo, or runs/demo-fast)."
)
@click.option(
    "--fast",
    is_flag=True,
    help="A first look in about a minute: the same stages and report on 120 scenes with fewer epochs "
    "(experiment demo_fast.yaml); its numbers are noisier than the demo's.",
)
@click.option("--open", "open_browser", is_flag=True, help="Open the report in the default browser.")
def demo(out: Path | None, fast: bool, open_browser: bool) -> None:
    """Offline: synthetic scenes + the shipped reference model -> the whole study -> OUT/report.html."""
    from probe_kit import distributed
    from probe_kit.experiment import DEMO_CONFIG, DEMO_FAST_CONFIG, load_experiment, run_experiment

    cfg = load_experiment(DEMO_FAST_CONFIG if fast else DEMO_CONFIG)
    out = out or Path("runs") / cfg.name
    study = dir_out(out, STUDY)
    with locked(study):  # checked before any work; one run per study folder
        check_kind(study)
        decision = run_experiment(cfg, out)
    if not distributed.is_main():
        return
    click.echo(f"{decision['verdict']}: exits {decision['exits']} -> {out / 'report.html'}")
    if open_browser:
        click.launch(str((out / "report.html").resolve()))
