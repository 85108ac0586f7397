"""Self-contained HTML feasibility reports, built from result files only."""

from probe_kit.report.build import build_comparison, build_report

__all__ = ["build_comparison", "build_report"]
