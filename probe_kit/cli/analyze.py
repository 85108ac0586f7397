"""``probe-kit analyze NAME --cache F --layers L``: one analyzer on one layer set."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from probe_kit.cli.options import Device


@click.command("analyze")
@click.argument("name", required=False)
@click.option("--list", "show_list", is_flag=True, help="List the available analyzers.")
@click.option(
    "--cache", "cache_path", type=click.Path(path_type=Path), default=None, help="Feature cache (.h5) to read."
)
@click.option("--layers", default="all", show_default=True, help="all | 3,6,9,12 | 1-4 | -1")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Result folder (default runs/NAME).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--val-sequences", default=None, help="Validation sequences, comma-separated (default: last 30%).")
@click.option(
    "--device",
    type=Device(),
    default=None,
    help="Where the model runs, for analyzers that run it (attribution, flops).",
)
@click.option(
    "--option",
    "-o",
    "extra",
    multiple=True,
    metavar="KEY=VALUE",
    help="Analyzer option, e.g. -o epochs=20 -o head=linear -o init_from_head=true.",
)
def command(name, show_list, cache_path, layers, out, seed, val_sequences, device, extra) -> None:
    """Run one analyzer on one layer set of a cache; writes OUT/result.json."""
    from probe_kit import api
    from probe_kit.analyzers import get_analyzer, list_analyzers, write_result

    if show_list:
        for info in list_analyzers():
            click.echo(f"{info.name:14s} {info.summary}")
        return
    if not name or cache_path is None:
        raise click.UsageError("give an analyzer NAME and --cache (or --list)")
    options = dict(_parse_option(item) for item in extra)
    if val_sequences:
        options["val_sequences"] = val_sequences
    if device:
        if "device" not in get_analyzer(name).option_names():
            raise click.UsageError(f"--device: analyzer {name} does not run the model (it reads the cache only)")
        options["device"] = device
    from probe_kit.analyzers._options import check_options
    from probe_kit.cli.outputs import ANALYSIS, dir_out, guarded

    options = check_options(get_analyzer(name), options, where="-o ", text=True)  # typed and in range
    out = out or Path("runs") / name
    with guarded(dir_out(out, ANALYSIS)):  # checked before any work; a failed run leaves no folder it created
        result = api.analyze(name, cache_path, layers, seed=seed, **options)
        result.extra["command"] = shlex.join(
            ["probe-kit", "analyze", name, "--cache", str(cache_path), "--layers", layers, "--seed", str(seed)]
            + [arg for item in extra for arg in ("-o", item)]
            + (["--val-sequences", val_sequences] if val_sequences else [])
            + (["--device", device] if device else [])
        )
        path = write_result(result, out)
    for layer, metrics in sorted(result.layers.items()):
        shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        click.echo(f"layer {layer:>2}: {shown}")
    click.echo(f"-> {path}")


def _parse_option(item: str) -> tuple[str, str]:
    """``KEY=VALUE`` -> ``(KEY, VALUE)``; the value is typed later, by the option's declaration."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--option")
    return key.strip(), value
