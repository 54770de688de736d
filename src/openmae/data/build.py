"""From settings to a seeded dataset and its resumable sampler."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from openmae.data.arrays import with_mapped_crop
from openmae.data.config import DataConfig
from openmae.data.datasets import ImageSource, build_source, stats_for
from openmae.data.device import DeviceAugment, PlanCrops
from openmae.data.draft import with_draft
from openmae.data.labels import LABEL_COLUMNS, SPLIT_COLUMNS, class_names, has_splits
from openmae.data.loader import (
    Batch,
    ResumableSampler,
    SeededSamples,
    class_balanced,
    end_workers,
    make_loader,
    probe_source,
)
from openmae.data.transforms import eval_transform, pretrain_transform
from openmae.data.volumes import FileVolumes

Subset = list[int]


class SourceView:
    """Items of a source picked by a list of indices (a subset, or the same items several times), kept as an int64
    array: a list of ints is one object an item, which loader workers would copy page by page as they read it
    (see :mod:`openmae.data.filelist`)."""

    def __init__(self, source: ImageSource, index: Sequence[int] | np.ndarray) -> None:
        self.source, self.index = source, np.asarray(index, dtype=np.int64)  # (N,)
        self.classes = source.classes

    @classmethod
    def limited(cls, source: ImageSource, count: int) -> SourceView:
        """The first ``count`` items of a source, spread evenly (a fixed, reproducible subset)."""
        step = len(source) / count
        return cls(source, (np.arange(count) * step).astype(np.int64))  # int(i * step), as before

    @classmethod
    def repeated(cls, source: ImageSource, times: int) -> SourceView:
        """Every item ``times`` over: each copy has its own index, hence its own augmentation and mask seeds."""
        return cls(source, np.tile(np.arange(len(source), dtype=np.int64), times))

    def __len__(self) -> int:
        return len(self.index)

    def load(self, index: int):
        return self.source.load(int(self.index[index]))

    def describe(self, index: int) -> str:
        return self.source.describe(int(self.index[index]))

    def file(self, index: int):
        return self.source.file(int(self.index[index]))

    def view(self, index: int):  # arrays and volumes (data.format=array, volume): what a crop cuts
        return self.source.view(int(self.index[index]))


def labels_of(source: ImageSource | SourceView) -> np.ndarray:
    """The labels of every item of a source, read without decoding it: (N,) class indices, or (N, classes) rows
    (``data.multi_label``)."""
    return np.stack([np.asarray(source.file(i)[1]) for i in range(len(source))])


def holdout_indices(count: int, fraction: float, seed: int, what: str = "images") -> tuple[list[int], list[int]]:
    """(kept, held out): a fixed random ``fraction`` of ``range(count)`` held out, both in ascending order."""
    held = round(count * fraction)
    if fraction > 0 and not 0 < held < count:
        raise ValueError(f"data.holdout={fraction} of {count} training {what} holds out {held}; choose a fraction "
                         "that leaves at least one of them on each side")
    perm = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[held:]), sorted(perm[:held])


def holdout_split(full: ImageSource, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(kept, held out) items of the training split: :func:`holdout_indices` of its images, or of a volume source's
    volumes, each whole on one side (its slices are near copies of each other: held-out slices of a volume trained
    on would measure memory, not generalisation)."""
    if not isinstance(full, FileVolumes):
        return holdout_indices(len(full), fraction, seed)
    spans = full.volume_items()
    kept, held = holdout_indices(len(spans), fraction, seed, "volumes")
    return [i for v in kept for i in spans[v]], [i for v in held for i in spans[v]]


def source_for(cfg: DataConfig, split: str, channels: int, limit: int = 0, full: ImageSource | None = None,
               holdout: bool = True) -> ImageSource:
    """The images of ``split`` (its first ``limit``, spread evenly, when set). With ``data.holdout`` (and
    ``holdout`` true), the training split gives the images it keeps and the evaluation split the held-out ones;
    ``full``: the whole training split already built, so that it is not scanned again."""
    if holdout and cfg.holdout and split in (cfg.train_split, cfg.eval_split):
        full = build_source(cfg, cfg.train_split, channels) if full is None else full
        kept, held = holdout_split(full, cfg.holdout, cfg.holdout_seed)
        source: ImageSource = SourceView(full, held if split == cfg.eval_split else kept)
    else:
        source = build_source(cfg, split, channels)
    if limit and limit < len(source):
        source = SourceView.limited(source, limit)
    probe_source(source, cfg.bad_files)
    return source


def require_eval_folder(cfg: DataConfig) -> None:
    """Refuse class folders with no folder for the evaluation split: it would read the training images themselves
    (an ImageFolder split is ``path/<split>`` where there is one, else ``path``), and kNN or accuracy on them
    measures memory, not transfer."""
    if cfg.name == "csv":
        if has_splits(cfg):
            return
        raise ValueError(f"data.path {cfg.path} has no split column ({', '.join(SPLIT_COLUMNS)}), so evaluation would "
                         "read the training images themselves; set data.holdout=0.1 to evaluate on a held-out tenth of "
                         f"them, add a split column ('{cfg.train_split}' / '{cfg.eval_split}'), or give one file a split "
                         "with a pattern: data.path=<folder>/{split}.csv")
    if cfg.name != "imagefolder" or not Path(cfg.path).is_dir() or (Path(cfg.path) / cfg.eval_split).is_dir():
        return
    raise ValueError(f"data.path {cfg.path} has no '{cfg.eval_split}/' folder (data.eval_split), so evaluation would "
                     "read the training images themselves; set data.holdout=0.1 to evaluate on a held-out tenth of "
                     f"them, or give a folder holding '{cfg.train_split}/' and '{cfg.eval_split}/', each of class "
                     "folders")


def split_sources(cfg: DataConfig, channels: int) -> tuple[ImageSource, ImageSource]:
    """The training and evaluation splits (``data.max_samples`` / ``data.max_eval_samples`` applied), each folder
    scanned once: build them once per run, as scanning an ImageNet-sized folder takes minutes, and with
    ``data.holdout`` both come from the training folder."""
    require_labels(cfg)
    if not cfg.holdout:
        require_eval_folder(cfg)
    full = build_source(cfg, cfg.train_split, channels) if cfg.holdout else None
    return (source_for(cfg, cfg.train_split, channels, cfg.max_samples, full),
            source_for(cfg, cfg.eval_split, channels, cfg.max_eval_samples, full))


def require_labels(cfg: DataConfig) -> None:
    """Refuse a list of images without labels where each image's class is read (classifiers, probes, kNN)."""
    if cfg.name == "csv" and not class_names(cfg):
        raise ValueError(f"data.path {cfg.path} lists no labels (no column named {', '.join(LABEL_COLUMNS)}): "
                         "fine-tuning, probes, kNN and evaluate read each image's class; add a label column, or "
                         "name it with data.csv_columns=[<image column>,<label column>]")


def report_source(cfg: DataConfig, channels: int) -> ImageSource | None:
    """``data.eval_split`` itself (not its held-out stand-in) when ``data.report_eval_split`` is on, else None."""
    if not cfg.report_eval_split:
        return None
    require_eval_folder(cfg)
    return source_for(cfg, cfg.eval_split, channels, cfg.max_eval_samples, holdout=False)


def train_dataset(cfg: DataConfig, img_size: tuple[int, int], channels: int, batch_size: int, seed: int,
                  rank: int = 0, world_size: int = 1, transform: Callable | None = None,
                  source: ImageSource | None = None) -> tuple[SeededSamples, ResumableSampler]:
    """Training images with the pretraining augmentation (or ``transform``), shuffled per epoch.
    ``source``: the training split already built (``source_for``), so that a large folder is scanned once."""
    if cfg.device_augment and transform is not None:
        raise ValueError("data.device_augment=true applies to the pretraining augmentation only; set it to false "
                         "for fine-tuning (its RandAugment / random erasing recipe runs in the loader's workers)")
    source = source or source_for(cfg, cfg.train_split, channels, cfg.max_samples)
    if cfg.repeat > 1:  # a small folder: longer epochs, so that per-epoch costs (loader refill, logging) amortise
        source = SourceView.repeated(source, cfg.repeat)
    mean, std = stats_for(cfg, channels)
    weights = class_balanced(labels_of(source), list(source.classes)) if cfg.balance == "classes" else None
    sampler = ResumableSampler(len(source), batch_size, seed, shuffle=True, rank=rank, world_size=world_size,
                               weights=weights)
    if cfg.device_augment:
        plan = PlanCrops(img_size, cfg.crop_scale, cfg.hflip, channels, cfg.device_decode, cfg.jpeg_draft,
                         cfg.reads_arrays)
        stage = DeviceAugment(img_size, channels, mean, std, decoder=cfg.jpeg_decoder)
        return SeededSamples(source, plan, cfg.bad_files, device_stage=stage), sampler
    transform = transform or pretrain_transform(cfg, img_size, mean, std)
    if cfg.reads_arrays:  # only each crop's part of a .npy file, an uncompressed TIFF or a tiled one is read
        transform = with_mapped_crop(transform, channels, cfg.array_layout)
    elif cfg.jpeg_draft:  # large JPEGs decoded at the scale their crop allows
        transform = with_draft(transform, channels)
    return SeededSamples(source, transform, cfg.bad_files), sampler


def eval_batches(cfg: DataConfig, split: str, img_size: tuple[int, int], channels: int, batch_size: int,
                 limit: int = 0, augment: bool = False, seed: int = 0, source: ImageSource | None = None,
                 ) -> Iterator[Batch]:
    """Every image of ``split`` once, in order, with the evaluation transform (or the training one)."""
    source = source or source_for(cfg, split, channels, limit)
    mean, std = stats_for(cfg, channels)
    transform = pretrain_transform(cfg, img_size, mean, std) if augment else eval_transform(cfg, img_size, mean, std)
    transform = with_draft(transform, channels) if cfg.jpeg_draft and cfg.format == "image" else transform
    sampler = ResumableSampler(len(source), batch_size, seed, shuffle=False, drop_last=False)
    loader = make_loader(SeededSamples(source, transform, cfg.bad_files), sampler, cfg.num_workers, False)
    batches = iter(loader)
    try:
        yield from batches
    finally:  # closed (batches_of) or run to its end: the workers stop now, not when the iterator is collected
        end_workers(batches)
