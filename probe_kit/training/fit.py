"""One training loop for every head trained on cached tokens (tuned lens, probes, dense probe)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import numpy as np
import torch


def fit(
    module: torch.nn.Module,
    batches: Callable[[int], Iterable],
    loss_fn: Callable[[torch.nn.Module, object], dict[str, torch.Tensor]],
    holdout_loss: Callable[[torch.nn.Module], float | dict[str, float]],
    epochs: int,
    lr: float,
    patience: int = 5,
    desc: str = "fit",
    progress: bool = True,
    reduce_logs: Callable[[dict[str, float]], dict[str, float]] | None = None,
) -> list[dict]:
    """Adam on ``loss_fn(module, batch)["loss"]``; keeps the weights of the best holdout epoch.

    ``holdout_loss`` returns the holdout loss, or a dict of holdout figures to log with ``holdout`` (the loss)
    and, optionally, ``select``: what picks the best epoch (lower is better; the loss by default).

    ``batches(epoch)`` yields one epoch's mini-batches. Returns one record per epoch with the mean
    of every loss component and the holdout loss, so each component can be plotted. ``reduce_logs``
    turns one process's epoch means into the run's (under torchrun: the mean over ranks).
    """
    from probe_kit.console import progress_bar

    optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=lr)
    best, best_state, since_best, history = float("inf"), copy.deepcopy(module.state_dict()), 0, []
    for epoch in progress_bar(range(epochs), desc=desc, leave=False, show=progress):
        module.train()
        sums: dict[str, list[float]] = {}
        for batch in batches(epoch):
            parts = loss_fn(module, batch)
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            optimizer.step()
            for key, value in parts.items():
                sums.setdefault(key, []).append(float(value.detach()))
        module.eval()
        with torch.no_grad():
            held = holdout_loss(module)
        record = held if isinstance(held, dict) else {"holdout": held}
        means = {k: float(np.mean(v)) for k, v in sums.items()}
        logs = {k: v for k, v in record.items() if k != "select"}
        history.append({"epoch": epoch + 1, **(reduce_logs(means) if reduce_logs else means), **logs})
        held = record.get("select", record["holdout"])
        if held < best - 1e-6:
            best, best_state, since_best = held, copy.deepcopy(module.state_dict()), 0
        else:
            since_best += 1
            if since_best >= patience:
                break
    module.load_state_dict(best_state)
    module.eval()
    return history
