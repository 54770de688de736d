"""Data work every rank of a torchrun job would otherwise repeat alike, split between the ranks instead.

The engine builds a task's sources and training data inside :func:`shared_by_ranks`, where every rank builds the same
things in the same order. There, code that reads every file once before training (the per-volume survey, the band
statistics of arrays) takes its part by :func:`share` and exchanges the results with :func:`gather`: a job reads
each file once between its ranks, not once on each (eight GPUs of a node: an eighth of the reads of a shared disk,
and of the wait). Outside the block (what rank 0 builds alone, such as the kNN monitor's images) :func:`share` is
``(0, 1)``: the process does all of it, and no rank waits for another."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

_SHARE: list[tuple[int, int]] = []  # (rank, world size) inside shared_by_ranks


@contextlib.contextmanager
def shared_by_ranks(rank: int, world_size: int) -> Iterator[None]:
    """Within the block, every rank of the torch.distributed group builds the same sources in the same order."""
    _SHARE.append((rank, world_size))
    try:
        yield
    finally:
        _SHARE.pop()


def share() -> tuple[int, int]:
    """(rank, world size) to split work by: ``(0, 1)`` outside :func:`shared_by_ranks`."""
    return _SHARE[-1] if _SHARE else (0, 1)


def gather(part: Any, world_size: int) -> list[Any]:
    """Every rank's ``part`` (picklable), in rank order, on every rank."""
    import torch.distributed as dist

    every: list[Any] = [None] * world_size
    dist.all_gather_object(every, part)
    return every
