"""How the decision and the report name what was trained."""

from __future__ import annotations


def tuned_blocks_text(blocks: tuple[int, ...]) -> str:
    """0-based block indices as runs of 1-based blocks (layer k is block k's output): ``frozen``, ``block 6
    fine-tuned``, ``blocks 2-3, 5-6 fine-tuned (2 before each exit)``."""
    runs: list[list[int]] = []
    for block in sorted(b + 1 for b in blocks):
        if runs and block == runs[-1][-1] + 1:
            runs[-1].append(block)
        else:
            runs.append([block])
    if not runs:
        return "frozen"
    if len(runs) == 1 and len(runs[0]) == 1:
        return f"block {runs[0][0]} fine-tuned"
    text = "blocks " + ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs) + " fine-tuned"
    lengths = {len(r) for r in runs}
    return text + (f" ({lengths.pop()} before each exit)" if len(runs) > 1 and len(lengths) == 1 else "")
