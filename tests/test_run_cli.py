"""``probe-kit run`` outside a checkout: the demo YAML is not on disk, the command says where the demo is."""

from __future__ import annotations

from click.testing import CliRunner

from probe_kit.cli.main import cli


def test_run_demo_yaml_outside_a_checkout_points_at_probe_kit_demo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["run", "experiments/demo.yaml"])
    assert result.exit_code == 1
    assert "probe-kit demo" in result.output and "experiments/demo.yaml" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "runs").exists()
