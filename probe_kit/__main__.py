"""``python -m probe_kit`` runs the CLI."""

from probe_kit.cli.main import cli

cli(prog_name="probe-kit")
