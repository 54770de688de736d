"""Data work every rank of a torchrun job would otherwise repeat alike, split between the ranks instead.

The engine builds a task's sources and training data inside :func:`shared_by_ranks`, where every rank builds the same
things in the same order. There, code that reads every file once before training (the per-volume survey, the band
statistics of arrays, the folder scan, volume headers and their files' sizes and times) maps over its files with
:func:`shared_map`: a job reads each file once between its ranks, not once on each (eight GPUs of a node: an eighth of
the reads of a shared disk, and of the wait). Outside the block (what rank 0 builds alone, such as the kNN monitor's
images) :func:`share` is ``(0, 1)``: the process does all of it, and no rank waits for another."""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

_SHARE: list[tuple[int, int]] = []  # (rank, world size) inside shared_by_ranks
_CUT_WHEN: list[Callable[[], bool]] = []  # inside cut_by: whether a stop was asked for


class BuildStopped(Exception):
    """A stop was asked for (:func:`cut_by`) while :func:`shared_map`'s work was in hand: the items left were skipped
    on every rank, and every rank raised this after the exchange."""


class _Skipped:
    """An item :func:`shared_map` did not compute because a stop was asked for (pickles to another rank)."""


@contextlib.contextmanager
def cut_by(stopped: Callable[[], bool]) -> Iterator[None]:
    """Within the block, :func:`shared_map` asks ``stopped()`` before each item (a stop signal received: a volume
    survey of thousands of files would otherwise go on for minutes), skips the items left once it is true, and
    raises :class:`BuildStopped` on every rank (the ranks agree in the exchange they make anyway)."""
    _CUT_WHEN.append(stopped)
    try:
        yield
    finally:
        _CUT_WHEN.pop()


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


def keeps_for_node() -> bool:
    """Whether this process writes what every rank ends with (after an exchange) to a cache: the main rank, and under
    torchrun the first rank of every node (LOCAL_RANK 0), so that a cache on each node's own disk holds it all (on a
    disk the nodes share, each node writes the same)."""
    return share()[0] == 0 or os.environ.get("LOCAL_RANK") == "0"


def gather(part: Any, world_size: int) -> list[Any]:
    """Every rank's ``part`` (picklable), in rank order, on every rank."""
    import torch.distributed as dist

    every: list[Any] = [None] * world_size
    dist.all_gather_object(every, part)
    return every


POOL_PROBE = 16  # items a rank computes itself, timed, before it decides on processes (shared_map's processes)
POOL_AFTER_S = 3.0  # the rest of its part taking longer than this (as timed) goes to forked processes
_POOL_WORK: list[Callable[[int], Any]] = []  # the forked processes' work: inherited, where a closure cannot pickle


def pool_size() -> int:
    """Processes a rank may keep busy: the cores this process may run on, shared with the other ranks of its node
    (torchrun's ``LOCAL_WORLD_SIZE``)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cores // max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)


_ctrl_c = {"received": False, "in_item": False}  # in a pool process


def _pool_call(i: int) -> Any:
    if _ctrl_c["received"]:  # the rest of a chunk after a Ctrl-C: the parent no longer waits for it
        raise KeyboardInterrupt
    _ctrl_c["in_item"] = True
    try:
        return _POOL_WORK[-1](i)
    finally:
        _ctrl_c["in_item"] = False


def _ctrl_c_in_pool(number: int, frame: Any) -> None:
    """A pool process's Ctrl-C (a terminal sends it to every process of the run): the item in hand stops, as Python
    stops it, and goes back to the parent as that item's exception (the parent, interrupted too, drops it); a
    process waiting for work goes on waiting, to be ended by the parent. Left to Python, such a process printed a
    traceback of its own; ignoring Ctrl-C instead made the parent wait for the chunks in hand (an eighth of a
    process's share each); ending the process at once breaks the executor of Python 3.11 (its manager thread then
    reports an InvalidStateError)."""
    _ctrl_c["received"] = True
    if _ctrl_c["in_item"]:
        raise KeyboardInterrupt


def _pool_process_start() -> None:
    signal.signal(signal.SIGINT, _ctrl_c_in_pool)


def _in_processes(one: Callable[[int], Any], items: range, size: int) -> list[Any]:
    """``[one(i) for i in items]`` in ``size`` forked processes (threads would hold each other back on the GIL: DICOM
    headers parsed on 2 threads took 1.9x the CPU time of one); the objects of this process frozen for the
    collector while they fork, as the loader's workers are (:class:`openmae.data.loader.Loader`)."""
    _POOL_WORK.append(one)
    gc.collect()
    gc.freeze()  # until the map ends: the processes are forked as it goes
    try:  # a process killed (out of memory) raises BrokenProcessPool here instead of leaving the map waiting
        with ProcessPoolExecutor(size, mp_context=multiprocessing.get_context("fork"),
                                 initializer=_pool_process_start) as pool:
            return list(pool.map(_pool_call, items, chunksize=max(1, len(items) // (size * 8))))
    finally:
        gc.unfreeze()
        _POOL_WORK.pop()


class RanksDisagree(RuntimeError):
    """The ranks were asked for different work (:func:`shared_map`'s ``agree``); ``values``: each rank's, in order."""

    def __init__(self, values: list[Any]) -> None:
        super().__init__(f"the ranks were asked for different work: {values}")
        self.values = values


def shared_map(fn: Callable[[int], T], count: int, catch: tuple[type[BaseException], ...] = (),
               agree: Any = None, threads: int = 1, processes: bool = False, what: str = ""
               ) -> list[T | BaseException]:
    """``[fn(0), ..., fn(count - 1)]`` on every rank, each rank of :func:`shared_by_ranks` computing every
    world-size-th. An exception of a kind in ``catch`` takes its item's place in the list, so that a rank meeting one
    does not leave the others waiting for its part; the caller raises or skips it. ``agree``: a value that must be
    the same on every rank (what the work is), else :class:`RanksDisagree` on every rank. ``threads`` > 1: a rank
    computes its items that many at a time (work that releases the GIL: reading, decompressing). ``processes``:
    work that holds the GIL (parsing), whose rank's part would take more than :data:`POOL_AFTER_S` (timed on its
    first items), goes on in forked processes, one a core of the rank's share of the machine (``what`` names the
    work in the log line that says so). Results and caught exceptions must pickle; with processes, return numpy
    arrays rather than tensors (torch sends a tensor from a process through shared memory: tens of ms each)."""
    rank, world = share()
    mine = range(rank, count, world)
    stopped = _CUT_WHEN[-1] if _CUT_WHEN else None

    def one(i: int) -> T | BaseException:
        if stopped is not None and stopped():
            return _Skipped()  # type: ignore[return-value]
        try:
            return fn(i)
        except catch as err:
            return err

    results: list[Any] = []
    if processes and len(mine) > POOL_PROBE and "fork" in multiprocessing.get_all_start_methods():
        start = time.perf_counter()
        results = [one(i) for i in mine[:POOL_PROBE]]
        mine = mine[POOL_PROBE:]
        each = (time.perf_counter() - start) / POOL_PROBE
        size = min(pool_size(), len(mine) // POOL_PROBE)
        if size > 1 and each * len(mine) > POOL_AFTER_S:
            log.info("%s: %.2f ms each, %d more: %d processes", what or "work", each * 1e3, len(mine), size)
            results += _in_processes(one, mine, size)
            mine = mine[:0]
    if threads > 1 and len(mine) > 1:
        with ThreadPoolExecutor(min(threads, len(mine))) as pool:
            results += pool.map(one, mine)
    else:
        results += [one(i) for i in mine]
    if world == 1:
        _raise_if_cut(results, count)
        return results
    parts = gather((agree, results), world)
    if any(theirs != agree for theirs, _ in parts):
        raise RanksDisagree([theirs for theirs, _ in parts])
    _raise_if_cut([r for _, part in parts for r in part], count)
    merged: list[Any] = [None] * count
    for r, (_, part) in enumerate(parts):
        merged[r::world] = part
    return merged


def _raise_if_cut(results: list[Any], count: int) -> None:
    skipped = sum(isinstance(r, _Skipped) for r in results)
    if skipped:
        raise BuildStopped(f"a stop was asked for: {skipped} of {count} items skipped")
