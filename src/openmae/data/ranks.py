"""Data work every rank of a torchrun job would otherwise repeat alike, split between the ranks instead.

The engine builds a task's sources and training data inside :func:`shared_by_ranks`, where every rank builds the same
things in the same order. There, code that reads every file once before training (the per-volume survey, the band
statistics of arrays, the folder scan, volume headers) maps over its files with :func:`shared_map`: a job reads
each file once between its ranks, not once on each (eight GPUs of a node: an eighth of the reads of a shared disk,
and of the wait). Outside the block (what rank 0 builds alone, such as the kNN monitor's images) :func:`share` is
``(0, 1)``: the process does all of it, and no rank waits for another."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

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


class RanksDisagree(RuntimeError):
    """The ranks were asked for different work (:func:`shared_map`'s ``agree``); ``values``: each rank's, in order."""

    def __init__(self, values: list[Any]) -> None:
        super().__init__(f"the ranks were asked for different work: {values}")
        self.values = values


def shared_map(fn: Callable[[int], T], count: int, catch: tuple[type[BaseException], ...] = (),
               agree: Any = None, threads: int = 1) -> list[T | BaseException]:
    """``[fn(0), ..., fn(count - 1)]`` on every rank, each rank of :func:`shared_by_ranks` computing every
    world-size-th. An exception of a kind in ``catch`` takes its item's place in the list, so that a rank meeting one
    does not leave the others waiting for its part; the caller raises or skips it. ``agree``: a value that must be
    the same on every rank (what the work is), else :class:`RanksDisagree` on every rank. ``threads`` > 1: a rank
    computes its items that many at a time (work that releases the GIL: reading, decompressing). Results and caught
    exceptions must pickle."""
    rank, world = share()
    mine = range(rank, count, world)

    def one(i: int) -> T | BaseException:
        try:
            return fn(i)
        except catch as err:
            return err

    if threads > 1 and len(mine) > 1:
        with ThreadPoolExecutor(min(threads, len(mine))) as pool:
            results = list(pool.map(one, mine))
    else:
        results = [one(i) for i in mine]
    if world == 1:
        return results
    parts = gather((agree, results), world)
    if any(theirs != agree for theirs, _ in parts):
        raise RanksDisagree([theirs for theirs, _ in parts])
    merged: list[Any] = [None] * count
    for r, (_, part) in enumerate(parts):
        merged[r::world] = part
    return merged
