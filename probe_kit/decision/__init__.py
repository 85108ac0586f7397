"""Decision: per-layer evidence + FLOPs -> recommended exits, a verdict, and a rationale."""

from probe_kit.decision.decide import (
    Criteria,
    Decision,
    by_role,
    check_bars,
    criteria_from,
    decide,
    load_results,
    parse_bars,
    role_of,
)

__all__ = [
    "Criteria",
    "Decision",
    "by_role",
    "check_bars",
    "criteria_from",
    "decide",
    "load_results",
    "parse_bars",
    "role_of",
]
