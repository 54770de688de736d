"""Resumable, distributed, seeded loading.

Each sample's augmentation (and the pretraining mask) is drawn from a seed that is a function of
(run seed, epoch, sample index) only. So what a step sees does not depend on the number of workers, on
the number of processes sharing the global batch, or on whether the run was resumed mid-epoch.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import math
import random
import signal
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from openmae.data.datasets import ImageSource
from openmae.data.device import PlannedBatch
from openmae.data.images import BadImageError

log = logging.getLogger("openmae.data")
MAX_CONSECUTIVE_BAD = 64


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed unique to (run seed, epoch, sample index)."""
    return (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) % (2**63 - 1)


class ResumableSampler(Sampler):
    """Shuffled (or ordered) indices split over ranks like ``DistributedSampler``, yielding
    ``(index, sample_seed)`` pairs and able to start mid-epoch.

    Written here rather than using ``DistributedSampler`` because that one can neither start at a position
    within an epoch nor hand a per-sample seed to the dataset.
    """

    def __init__(self, size: int, batch_size: int, seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1, drop_last: bool = True, weights: torch.Tensor | None = None) -> None:
        self.size, self.batch_size, self.seed, self.shuffle = size, batch_size, seed, shuffle
        # (size,) each item's chance to be drawn: an epoch's ``size`` items drawn with replacement (data.balance)
        self.weights = weights
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch, self.start_batch, self.end_epoch = 0, 0, 1
        self.batches: int | None = None  # batches taken from each epoch (None: all)
        per_rank = size // world_size if drop_last else math.ceil(size / world_size)
        self.batches_per_epoch = per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"dataset of {size} images is too small for batch {batch_size} x {world_size} process(es); "
                f"lower the batch size or add images"
            )

    def set_position(self, epoch: int, start_batch: int = 0, end_epoch: int | None = None,
                     batches: int | None = None) -> None:
        """Start at batch ``start_batch`` of ``epoch`` and run to the end of epoch ``end_epoch - 1`` (default:
        this epoch only), taking the first ``batches`` batches of each epoch (default: all of them).

        Spanning several epochs lets one loader iterator run through them, so its workers go on preparing the
        next epoch's first batches while the training loop ends an epoch (no refill stall at the boundary);
        the (index, seed) stream is exactly the concatenation of the single epochs'."""
        end_epoch = epoch + 1 if end_epoch is None else end_epoch
        if end_epoch > epoch + 1 and not self.drop_last:
            raise ValueError("a sampler that keeps partial batches (drop_last=False) can only run one epoch at a "
                             "time: a partial batch would mix two epochs")
        if batches is not None and not 0 < batches <= self.batches_per_epoch:
            raise ValueError(f"batches per epoch must be in [1, {self.batches_per_epoch}], got {batches}")
        self.epoch, self.start_batch, self.end_epoch = epoch, start_batch, end_epoch
        self.batches = batches

    def epoch_indices(self, epoch: int, start_batch: int = 0) -> list[int]:
        """This rank's sample indices of ``epoch`` from batch ``start_batch`` on."""
        if self.weights is not None:  # from the epoch's own seed, as a permutation: a resume draws the same
            gen = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.multinomial(self.weights, self.size, replacement=True, generator=gen).tolist()
        elif self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.size, generator=gen).tolist()
        else:
            order = list(range(self.size))
        if not self.drop_last and len(order) % self.world_size:
            order += order[: self.world_size - len(order) % self.world_size]
        order = order[self.rank :: self.world_size]
        return order[start_batch * self.batch_size : self._end()]

    def _end(self) -> int:
        """How many of an epoch's indices this rank takes (before ``start_batch``)."""
        if self.batches is not None:
            return self.batches * self.batch_size
        if self.drop_last:
            return self.batches_per_epoch * self.batch_size
        return math.ceil(self.size / self.world_size)  # the order is padded to a multiple of the world size

    def draws(self, epoch: int, start_batch: int = 0) -> list[int]:
        """With ``weights``: this rank's positions in the epoch's draw from batch ``start_batch`` on, which seed each
        drawn item's augmentation (an image drawn twice in an epoch is cropped twice, not copied)."""
        return list(range(self.rank, self.size, self.world_size))[start_batch * self.batch_size : self._end()]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for epoch in range(self.epoch, self.end_epoch):
            start = self.start_batch if epoch == self.epoch else 0
            indices = self.epoch_indices(epoch, start)
            keys = self.draws(epoch, start) if self.weights is not None else indices
            for index, key in zip(indices, keys, strict=True):
                yield index, sample_seed(self.seed, epoch, key)

    def __len__(self) -> int:  # arithmetic: drawing every epoch's order here would cost a permutation each
        first = max(0, self._end() - self.start_batch * self.batch_size)
        return first + (self.end_epoch - self.epoch - 1) * self._end()


def class_balanced(labels: np.ndarray | torch.Tensor, classes: list[str] | None = None) -> torch.Tensor:
    """(N,) chances that make every class of ``labels`` (N,) equally likely (``data.balance=classes``), and the log
    says how often the rarest class's images are then seen."""
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if len(labels) and int(labels.min()) < 0:
        raise ValueError("data.balance=classes draws every class alike, but these images have no labels (a folder "
                         "or list without them); set data.balance=none")
    counts = torch.bincount(labels)
    present = counts > 0
    rarest = int(torch.where(present, counts, counts.max() + 1).argmin())
    name = classes[rarest] if classes and rarest < len(classes) else str(rarest)
    log.info("data.balance=classes: each epoch draws its %d images with replacement, the %d classes alike: the "
             "rarest (%s, %d images) each about %.1f times an epoch", len(labels), int(present.sum()), name,
             int(counts[rarest]), len(labels) / int(present.sum()) / int(counts[rarest]))
    return (1.0 / counts.double())[labels]


class SeededSamples(Dataset):
    """Decodes, augments under the sample's own seed, and applies the bad-file policy.

    Returns ``(image tensor, label, sample seed, files skipped)``. With policy ``skip`` an unreadable file is
    replaced by the next readable one (so batches keep their size) and counted; ``fail`` raises.
    """

    def __init__(self, source: ImageSource, transform: Callable, bad_files: str = "skip", seeded: bool = True,
                 device_stage: Callable | None = None) -> None:
        self.source, self.transform, self.bad_files, self.seeded = source, transform, bad_files, seeded
        # a transform with ``read(source, index)`` reads the item itself (data.device_augment: JPEGs stay encoded)
        self.read = getattr(transform, "read", None)
        # device_stage (DeviceAugment): decode(items, device), then augment(items, decoded, device) -> (N, C, H, W)
        # finish the augmentation on the training device
        self.device_stage = device_stage

    def to_device(self, batch: Batch, device: torch.device) -> Batch:
        """The batch with its images as one tensor on ``device`` (augmentation finished there if it is split)."""
        return self.finish_on_device(self.start_on_device(batch, device), device)

    def start_on_device(self, batch: Batch, device: torch.device) -> Batch | tuple[Batch, Any]:
        """The first part of :meth:`to_device`, which waits the most (decoding: ``DeviceAugment.decode``); it may run
        in another thread than :meth:`finish_on_device` (``DeviceAhead``)."""
        if self.device_stage is None:
            return batch
        return batch, self.device_stage.decode(batch.images, device)

    def finish_on_device(self, started: Batch | tuple[Batch, Any], device: torch.device) -> Batch:
        if self.device_stage is None:
            return started
        batch, decoded = started
        return Batch(self.device_stage.augment(batch.images, decoded, device), batch.labels, batch.seeds, batch.skipped)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        skipped = 0
        while True:
            try:  # a transform that reads the file itself (DraftCrop) may find it unreadable only when it decodes
                img, label = self.read(self.source, index) if self.read else self.source.load(index)
                return self._transform(img, seed), label, seed, skipped
            except BadImageError as err:
                if self.bad_files == "fail":
                    raise
                skipped += 1
                log.warning("skipping unreadable image %s", err)
                if skipped >= min(MAX_CONSECUTIVE_BAD, len(self.source)):
                    raise BadImageError(f"{skipped} consecutive unreadable images up to {err}; "
                                        f"check the data folder") from None
                index = (index + 1) % len(self.source)

    def _transform(self, img, seed: int):
        if not self.seeded:  # a deterministic transform (cached features) needs no seeding
            return self.transform(img)
        if get_worker_info() is not None:
            # a loader worker's random streams are its own and every sample reseeds all three, so there is
            # nothing to give back (saving and restoring numpy's state costs ~0.1 ms, as much as a 28px crop)
            return self._seeded_transform(img, seed)
        # in the training process itself (num_workers=0): give the caller's streams back untouched
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            try:
                return self._seeded_transform(img, seed)
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)

    def _seeded_transform(self, img, seed: int):
        # torchvision draws from torch's RNG, timm's RandAugment from `random` and numpy: seed all three.
        # The CPU generator only: torch.manual_seed would also queue a (costly) lazy CUDA seeding
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        return self.transform(img)


@dataclass
class Batch:
    """images (N, C, H, W), labels (N,) (-1 = unlabeled; (N, classes) of 0 / 1 with ``data.multi_label``), seeds
    (N,) int64, skipped (files replaced).

    With ``data.device_augment`` the loader's images are a ``PlannedBatch`` (crops planned for the device) until
    ``to_device``."""

    images: torch.Tensor | PlannedBatch
    labels: torch.Tensor
    seeds: torch.Tensor
    skipped: int

    def pin_memory(self) -> Batch:
        return Batch(self.images.pin_memory(), self.labels.pin_memory(), self.seeds, self.skipped)


def collate(samples: list) -> Batch:
    """Stack the images; crops planned for the device (``data.device_augment``) go into one ``PlannedBatch``."""
    images, labels, seeds, skipped = zip(*samples)
    images = torch.stack(images) if isinstance(images[0], torch.Tensor) else PlannedBatch.pack(list(images))
    # (N,) class indices, or (N, classes) rows of a multi-label list
    labels = torch.from_numpy(np.stack(labels)) if isinstance(labels[0], np.ndarray) else torch.tensor(labels)
    return Batch(images, labels, torch.tensor(seeds, dtype=torch.int64), sum(skipped))


def _leave_stop_signals_to_parent(worker_id: int) -> None:
    """In a loader worker: ignore the signals on which the training process saves and stops (see
    ``openmae.engine.preempt``; a forked worker inherits those handlers, marked ``stops_training``). A signal sent
    to the whole process group, as Slurm does, would otherwise kill the worker and with it the run before it can
    save. Workers still end with the training process."""
    for number in signal.valid_signals():
        with contextlib.suppress(OSError, ValueError):
            if getattr(signal.getsignal(number), "stops_training", False):
                signal.signal(number, signal.SIG_IGN)


class Loader(DataLoader):
    """A DataLoader whose worker processes are forked with the training process's objects frozen (``gc.freeze``):
    the cyclic garbage collector of a worker then leaves them alone. A collection of the oldest generation in a
    worker otherwise writes the collector's header of every one of the parent's objects (the model's modules, every
    imported library: ~390,000 objects after importing torch, timm and building ViT-B) and so copies the memory
    pages they sit on into the worker, ~94 MB a worker, as CPython's documentation of ``gc.freeze`` describes."""

    def __iter__(self) -> Iterator[Batch]:
        if not self.num_workers:
            return super().__iter__()
        gc.collect()  # nothing left for the workers to find among the frozen objects
        gc.freeze()
        try:
            batches = super().__iter__()  # forks the workers (persistent: once for the loader's life)
        finally:
            gc.unfreeze()
        _WITH_WORKERS.add(batches)
        return batches


def end_workers(batches: Iterator[Batch]) -> None:
    """Stop the worker processes of a loader's iterator now, as torch does when the iterator is garbage-collected
    (its ``_shutdown_workers``, which ``__del__`` calls): a run that ends on an error leaves its iterator referenced
    by the traceback, and with it idle workers (a notebook keeps the last traceback) that leave SIGTERM to the
    training process."""
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


class StopAsked(Exception):
    """Raised by a loop over :func:`batches_of` between two batches when the training run it serves was asked to stop
    (Ctrl-C, a scheduler's SIGTERM) during its epoch-end evaluation: the run saves as before the evaluation, which
    a resumed run does again, instead of making the user wait for (or, by pressing again, lose) a long evaluation."""


_stop_asked: list[Callable[[], bool]] = []  # the innermost `stops_between_batches` of this process


@contextlib.contextmanager
def stops_between_batches(asked: Callable[[], bool]) -> Iterator[None]:
    """While active, the loops over :func:`batches_of` raise :class:`StopAsked` before a batch once ``asked()``.
    The training loop sets it around its evaluations alone (what else it does between steps is not cut short)."""
    _stop_asked.append(asked)
    try:
        yield
    finally:
        _stop_asked.pop()


def _checked(batches: Iterator[Batch], asked: Callable[[], bool]) -> Iterator[Batch]:
    """``batches``, asking before the first is read (which starts the loader's workers) and before each is used;
    one asked for during the last batch lets the loop end as usual."""
    for batch in itertools.chain([None], batches):
        if asked():
            raise StopAsked("a stop was asked for during an evaluation")
        if batch is not None:
            yield batch


@contextlib.contextmanager
def batches_of(loader: Iterable[Batch]) -> Iterator[Iterator[Batch]]:
    """An iterator over ``loader`` whose worker processes stop when the ``with`` block ends, by an error in it too:
    an error's traceback keeps a plain ``for`` loop's iterator alive, and with it the loader's idle workers (a
    notebook keeps its last traceback until the next error). Inside :func:`stops_between_batches` it raises
    :class:`StopAsked` between batches once a stop was asked for."""
    batches = iter(loader)
    try:
        yield _checked(batches, _stop_asked[-1]) if _stop_asked else batches
    finally:
        end_workers(batches)
        if isinstance(batches, Generator):  # a generator over a loader (eval_batches): closed, it stops its own
            batches.close()


_WITH_WORKERS: weakref.WeakSet = weakref.WeakSet()  # the iterators with worker processes, while they live


def end_all_workers() -> None:
    """Stop the workers of every loader iterator still alive (at the process's exit, before multiprocessing's own
    SIGTERM-and-wait: an evaluation's iterator that an error left in a traceback), each as :func:`end_workers` does,
    so that they end as after a finished loop and torch reports no killed worker."""
    for batches in list(_WITH_WORKERS):
        with contextlib.suppress(Exception):  # at exit: one that cannot stop is killed next
            end_workers(batches)


def make_loader(dataset: SeededSamples, sampler: ResumableSampler, num_workers: int, pin_memory: bool) -> DataLoader:
    return Loader(
        dataset, batch_size=sampler.batch_size, sampler=sampler, num_workers=num_workers, collate_fn=collate,
        pin_memory=pin_memory, drop_last=sampler.drop_last, persistent_workers=num_workers > 0,
        generator=torch.Generator(),  # own RNG: building an iterator must not consume the global one (exact resume)
        prefetch_factor=4 if num_workers else None, worker_init_fn=_leave_stop_signals_to_parent,
    )


def probe_source(source: ImageSource, bad_files: str, count: int = 16) -> None:
    """Refuse at start a dataset whose first ``count`` files are all unreadable."""
    errors = []
    for index in range(min(count, len(source))):
        try:
            source.load(index)
            return
        except BadImageError as err:
            if bad_files == "fail":
                raise
            errors.append(str(err))
    raise ValueError(f"the first {len(errors)} images could not be read, the dataset looks unusable: "
                     + "; ".join(errors[:3]))
