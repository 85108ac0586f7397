"""torch.distributed in one place: who am I (from torchrun's environment), the process group, collectives.

A run is distributed when ``torchrun`` (or SLURM/Kubernetes through it) sets ``WORLD_SIZE > 1``; then
``session()`` opens the default process group: Gloo for CPU tensors, plus NCCL for CUDA tensors where
a GPU exists (``cpu:gloo,cuda:nccl``), so object collectives and barriers always go through Gloo on
the CPU and DistributedDataParallel on GPUs through NCCL. Without torchrun every helper is a
single-process no-op (rank 0 of 1), so library code calls them unconditionally.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TypeVar

T = TypeVar("T")

# Ranks wait for each other at barriers (e.g. while rank 0 alone trains heads on a cache), so the
# group's timeout must outlast the longest single-rank stage; override with PROBE_KIT_DIST_TIMEOUT_MIN.
DEFAULT_TIMEOUT_MIN = 360


# True while rank 0 runs work alone (``on_rank_zero``): inside it every helper sees one process, so work
# that would split itself (or nest ``on_rank_zero``) runs whole, with no collective the others never join.
_solo = False


def rank() -> int:
    """This process's global rank (0 without torchrun)."""
    return 0 if _solo else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Number of processes in the run (1 without torchrun)."""
    return 1 if _solo else int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def launched() -> bool:
    """True under torchrun with more than one process."""
    return world_size() > 1


def is_main() -> bool:
    """Rank 0: the one process that writes files and logs."""
    return rank() == 0


def local_device(device: str) -> str:
    """``cuda`` -> ``cuda:LOCAL_RANK`` under torchrun (one GPU per process); anything else unchanged."""
    return f"cuda:{local_rank()}" if launched() and device == "cuda" else device


def check_device(device: str, source: str = "--device") -> str:
    """``device`` if torch can run on it here, else a one-line ``UserError`` naming ``source``: not a torch
    device name, or an accelerator this machine does not have (checked before any work, not deep in a forward)."""
    import torch

    from probe_kit.errors import UserError

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        near = device.strip().lower() if isinstance(device, str) else device
        hint = f" (did you mean {near!r}?)" if near != device else ""
        raise UserError(f"{source} {device!r}: not a torch device; expected cpu, cuda, cuda:N or mps{hint}") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"{source} {device}: no CUDA device on this machine (torch {torch.__version__})")
        if parsed.index is not None and parsed.index >= count:
            raise UserError(f"{source} {device}: this machine has {count} CUDA device(s), numbered from 0")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{source} {device}: no MPS device on this machine")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"{source} {device}: device type {parsed.type!r} is not supported; use cpu, cuda or mps")
    return device


def shard_bounds(n: int, index: int, count: int, align: int = 1) -> tuple[int, int]:
    """Contiguous ``[lo, hi)`` of ``n`` items for shard ``index`` of ``count``; cuts fall on multiples of ``align``.

    Aligning cuts to the batch size keeps every batch of a sharded run equal to the batch of the
    single-process run, so outputs match exactly. The first shards get one block more when the
    blocks do not divide evenly.
    """
    if not 0 <= index < count:
        raise ValueError(f"shard {index} of {count}: expected 0 <= index < count")
    blocks = -(-n // align)
    per, extra = divmod(blocks, count)
    first = index * per + min(index, extra)
    last = first + per + (1 if index < extra else 0)
    return min(n, first * align), min(n, last * align)


@contextmanager
def session() -> Iterator[None]:
    """Open the default process group for the duration (only under torchrun, and only once)."""
    if not launched():  # torch is imported only when needed, so `--help` stays instant
        yield
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    minutes = float(os.environ.get("PROBE_KIT_DIST_TIMEOUT_MIN", DEFAULT_TIMEOUT_MIN))
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, timeout=timedelta(minutes=minutes))
    try:
        yield
    except BaseException:
        dist.destroy_process_group()  # no barrier: the other ranks may be waiting elsewhere
        raise
    # On success the ranks tear down together: one that destroys its Gloo pairs while a peer is still in its
    # last collective can abort the peer at exit ("terminate called without an active exception").
    dist.barrier()
    dist.destroy_process_group()


def active() -> bool:
    """True when a process group with more than one rank is open."""
    if not launched():
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier()


def all_gather_object(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order (``[obj]`` when not distributed)."""
    if not active():
        return [obj]
    import torch.distributed as dist

    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank."""
    if not active():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each key's mean over ranks (the same keys on every rank); unchanged when not distributed."""
    if not active():
        return values
    gathered = all_gather_object(values)
    return {key: sum(v[key] for v in gathered) / len(gathered) for key in values}


def effective_batch_line(stage: str, batch_size: int) -> str:
    """What one optimiser step of ``stage`` sees, said once per run: the batch over all processes."""
    world = world_size()
    per = -(-batch_size // world)
    spread = f"{world} processes, up to {per} images each, gradients all-reduced" if world > 1 else "one process"
    return f"[{stage}] effective batch size {batch_size} images per step ({spread})"


def data_parallel(module):
    """``module`` in DistributedDataParallel when a process group is open (one device per process), else itself."""
    if not active():
        return module
    from torch.nn.parallel import DistributedDataParallel

    device = next(module.parameters()).device
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def global_batch_parts(parts: dict, mine: dict[str, float], whole: dict[str, float]) -> dict:
    """This rank's shares of loss components over the global batch: ``parts[k] * W * mine[k] / whole[k]``.

    ``parts[k]`` is a component computed on this rank's images as a sum divided by a normaliser of them
    (``mine[k]``: boxes, tokens, class weights); ``whole[k]`` is that normaliser over the global batch.
    DistributedDataParallel averages gradients over the ``W`` ranks, so the mean over ranks of these
    shares is the component of the global batch in one process, and so is its gradient.
    """
    scale = world_size()
    return {k: parts[k] * (scale * mine[k] / whole[k]) for k in whole}


def global_batch_loss(parts: dict, weights: dict[str, float], mine: dict[str, float], whole: dict[str, float]):
    """``sum_k weights[k] * share_k`` of ``global_batch_parts``: this rank's share of a weighted loss."""
    shares = global_batch_parts(parts, mine, whole)
    return sum(weights[k] * shares[k] for k in weights)


class RankFailed(ValueError):
    """Raised on the waiting ranks when rank 0's work failed (rank 0 raises the original error); a
    ValueError so the command line reports it as one line on every rank."""


def on_rank_zero(work: Callable[[], T]) -> T:
    """Rank 0 runs ``work`` while the others wait; every rank returns its result.

    Inside ``work`` the helpers see one process (rank 0 of 1), so nested calls run whole. A failure on
    rank 0 is re-raised there and, as one line, on every other rank, so no rank is
    left waiting at a barrier until the timeout.
    """
    global _solo
    if not active():
        return work()
    result, error = None, None
    if is_main():
        try:
            _solo = True
            result = work()
        except BaseException as err:  # noqa: BLE001 - even an interrupt must release the waiting ranks; re-raised
            error = err
        finally:
            _solo = False
    status = broadcast_object((result, None if error is None else f"rank 0 failed: {error}"))
    if error is not None:
        raise error
    if status[1] is not None:
        raise RankFailed(status[1])
    return status[0]
