"""Decision: per-layer evidence + FLOPs -> recommended exits, a verdict, and a rationale."""

from probe_kit.decision.decide import Criteria, Decision, decide, load_results

__all__ = ["Criteria", "Decision", "decide", "load_results"]
