"""Root of the ``probe-kit`` command line. Commands stay thin: parse, build a config, call the library.

Heavy libraries (torch, transformers) are imported inside commands so ``--help`` is instant.
"""

from __future__ import annotations

import click

import probe_kit


class ProbeGroup(click.Group):
    """Turns library ``ValueError``s raised anywhere below it into one-line CLI errors (exit 1)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (ValueError, FileNotFoundError) as err:
            raise click.ClickException(str(err).splitlines()[0] if str(err) else repr(err)) from err


@click.group(cls=ProbeGroup)
@click.version_option(probe_kit.__version__, prog_name="probe-kit")
def cli() -> None:
    """Can the intermediate layers of a YOLOS detector support detection, and where should exits go?"""


def _register() -> None:
    from probe_kit.cli import analyze, cache, data, decide, evaluate, exits, reference, report, run

    for module in (data, cache, evaluate, analyze, decide, report, reference):
        cli.add_command(module.command)
    cli.add_command(exits.train_exits)
    cli.add_command(exits.evaluate_exits)
    cli.add_command(run.run)
    cli.add_command(run.demo)


_register()
