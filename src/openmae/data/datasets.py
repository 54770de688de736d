"""Datasets: image folders (with or without class folders) and named datasets (CIFAR, MNIST-likes, STL-10).

Every dataset yields ``(PIL image, label)`` with label -1 when there are none; augmentation and seeding are
added by :class:`openmae.data.loader.SeededSamples`.
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from openmae.data.arrays import ARRAY_SUFFIXES, STATS_FILES, band_stats, clipped, open_array, read_array, stats_items
from openmae.data.config import DataConfig
from openmae.data.filelist import FileList
from openmae.data.folders import find_images, find_in
from openmae.data.images import IMAGE_SUFFIXES, open_image, set_pixel_limit, to_channels
from openmae.data.labels import csv_split
from openmae.data.memo import Recent
from openmae.data.normalization import IMAGENET_MEAN, IMAGENET_STD
from openmae.data.scans import VOLUME_SUFFIXES
from openmae.data.survey import Settings
from openmae.data.tiles import TiledBands
from openmae.data.volumes import FileVolumes

log = logging.getLogger(__name__)

# Dataset statistics for normalisation (mean, std) per channel
STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
}


class ImageSource(Protocol):
    """What the loader needs: a length, ``load(i) -> (PIL image, label)``, a description for errors and
    ``file(i) -> (path or None, label)`` (the file behind an item, None when it is held in memory)."""

    classes: list[str]

    def __len__(self) -> int: ...
    def load(self, index: int) -> tuple[Image.Image, int]: ...
    def describe(self, index: int) -> str: ...
    def file(self, index: int) -> tuple[Path | None, int]: ...


def _label(labels: np.ndarray | None, index: int) -> int | np.ndarray:
    """An item's class index, -1 without labels, or its row (classes,) of a multi-label array (N, classes)."""
    if labels is None:
        return -1
    return labels[index] if labels.ndim == 2 else int(labels[index])


class FileImages:
    """Images read from files on demand (decoded lazily in the loader's workers)."""

    def __init__(self, files: Sequence[Path], labels: Sequence[int] | np.ndarray | None, channels: int,
                 classes: list[str]) -> None:
        # packed: no Python object a file, which the loader's workers would copy page by page (openmae.data.filelist)
        self.files = files if isinstance(files, FileList) else FileList(files)
        # (N,) class indices, or (N, classes) zeros and ones (data.multi_label)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.float32 if np.ndim(labels) == 2 else np.int64)
        self.channels, self.classes = channels, classes

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> tuple[Image.Image, int]:
        return open_image(self.files[index], self.channels), _label(self.labels, index)

    def describe(self, index: int) -> str:
        return str(self.files[index])

    def file(self, index: int) -> tuple[Path, int]:
        """The file behind item ``index`` and its label (read without decoding by ``data.device_augment``)."""
        return self.files[index], _label(self.labels, index)


class FileArrays(FileImages):
    """Files of bands (``data.format=array``) read on demand as (C, H, W) float32 tensors in their own units, clipped
    to ``clip`` when set (``data.clip``)."""

    def __init__(self, files: Sequence[Path], labels: Sequence[int] | np.ndarray | None, channels: int,
                 classes: list[str], layout: str = "auto", clip: tuple[float, float] | None = None) -> None:
        super().__init__(files, labels, channels, classes)
        self.layout, self.clip = layout, clip

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        image = read_array(self.files[index], self.channels, self.layout)
        return clipped(image, self.clip), _label(self.labels, index)

    def view(self, index: int) -> tuple[np.ndarray | TiledBands, int]:
        """Item ``index`` as a (C, H, W) view of its file, memory-mapped or tile by tile (:func:`open_array`): what
        a training crop reads its part of."""
        path, label = self.file(index)
        return clipped(open_array(path, self.channels, self.layout, mapped=True), self.clip), label


class ArrayImages:
    """Images held in memory as a uint8 array (N, H, W) or (N, H, W, 3)."""

    def __init__(self, array: np.ndarray, labels: np.ndarray | None, channels: int, classes: list[str]) -> None:
        self.array, self.labels, self.channels, self.classes = array, labels, channels, classes

    def __len__(self) -> int:
        return len(self.array)

    def load(self, index: int) -> tuple[Image.Image, int]:
        img = Image.fromarray(self.array[index])
        return to_channels(img, self.channels), _label(self.labels, index)

    def describe(self, index: int) -> str:
        return f"array item {index}"

    def file(self, index: int) -> tuple[None, int]:
        return None, _label(self.labels, index)  # in memory: no file


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST format, optionally gzipped).

    Written here because torchvision's MNIST classes only read their own ``<root>/<Name>/raw`` layout,
    while users (and the distributed archives) keep the four files in any folder.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def default_root() -> Path:
    return Path(os.environ.get("OPENMAE_DATA", Path.home() / ".cache" / "openmae" / "data"))


def file_source(files: Sequence[Path], labels: np.ndarray | None, channels: int, classes: list[str],
                cfg: DataConfig) -> FileImages | FileVolumes:
    """Files read as images, as arrays of bands with ``data.format=array``, as volumes of slices with ``volume``."""
    if cfg.format == "array":
        return FileArrays(files, labels, channels, classes, cfg.array_layout, cfg.clip)
    if cfg.format == "volume":
        survey = Settings(cfg.volume_norm, tuple(cfg.norm_percentiles), cfg.foreground, cfg.min_foreground)
        return FileVolumes(files, labels, channels, classes, cfg.slice_plane, cfg.bad_files, cfg.volume_cache, cfg.clip,
                           cfg.fourth_axis, survey)
    return FileImages(files, labels, channels, classes)


def suffixes_for(cfg: DataConfig) -> tuple[str, ...]:
    return {"array": ARRAY_SUFFIXES, "volume": VOLUME_SUFFIXES}.get(cfg.format, IMAGE_SUFFIXES)


def _image_folder(path: Path, channels: int, cfg: DataConfig) -> FileImages:
    classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise FileNotFoundError(f"{path} has no class folders; an ImageFolder is <path>/<class>/<image>")
    found = find_in([path / name for name in classes], suffixes_for(cfg))  # shared between a job's ranks
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), [len(f) for f in found])
    return file_source(FileList.concat(found), labels, channels, classes, cfg)


def _named(cfg: DataConfig, split: str, channels: int) -> ImageSource:
    import torchvision.datasets as tvd

    root = Path(cfg.root) if cfg.root else default_root()
    folder = root / cfg.name
    train = split == "train"
    if cfg.name in ("cifar10", "cifar100") and (folder / split).is_dir():
        return _image_folder(folder / split, channels, cfg)  # the ImageFolder-of-JPEGs layout
    if cfg.name in ("fashion-mnist", "mnist"):
        stem = "train" if train else "t10k"
        images = [folder / f"{stem}-images-idx3-ubyte{s}" for s in (".gz", "")]
        labels = [folder / f"{stem}-labels-idx1-ubyte{s}" for s in (".gz", "")]
        if any(p.is_file() for p in images):
            img = read_idx(next(p for p in images if p.is_file()))
            lab = read_idx(next(p for p in labels if p.is_file())) if any(p.is_file() for p in labels) else None
            names = (tvd.FashionMNIST if cfg.name == "fashion-mnist" else tvd.MNIST).classes  # label order
            return ArrayImages(img, lab, channels, list(names))
    try:
        if cfg.name == "stl10":
            ds = tvd.STL10(str(folder), split=split, download=cfg.download)
            return ArrayImages(ds.data.transpose(0, 2, 3, 1), ds.labels if split != "unlabeled" else None,
                               channels, list(ds.classes))
        cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "fashion-mnist": tvd.FashionMNIST,
               "mnist": tvd.MNIST}[cfg.name]
        ds = cls(str(folder), train=train, download=cfg.download)
    except RuntimeError as err:
        raise FileNotFoundError(
            f"dataset {cfg.name!r} ({split}) not found under {folder}: {err}. Point data.root (or OPENMAE_DATA) at "
            f"the folder that holds '{cfg.name}/', or set data.download=true when online"
        ) from None
    data = ds.data.numpy() if hasattr(ds.data, "numpy") else np.asarray(ds.data)
    return ArrayImages(data, np.asarray(ds.targets), channels, list(ds.classes))


def build_source(cfg: DataConfig, split: str, channels: int) -> ImageSource:
    """The images of ``split`` ("train", "test", ...) as configured; refuses an empty dataset."""
    set_pixel_limit(cfg.max_image_pixels)  # for the files' headers read here and the workers forked later
    if cfg.format == "image" and channels not in (1, 3):
        raise ValueError(f"the model takes {channels} input channels (model.in_chans) and image files decode to 1 or 3; "
                         f"for files of {channels} bands set data.format=array (.npy, TIFF or PNG arrays)")
    if cfg.name == "folder":
        path = Path(cfg.path)
        files = find_images(path, suffixes_for(cfg))
        source: ImageSource = file_source(files, None, channels, [], cfg)
    elif cfg.name == "imagefolder":
        path = Path(cfg.path)
        if path.is_file():
            raise NotADirectoryError(f"data.path {path} is a file; give the folder of class folders "
                                     "(<path>/<class>/<image>)")
        if not path.is_dir():
            raise FileNotFoundError(f"data.path {path} does not exist")
        source = _image_folder(path / split if (path / split).is_dir() else path, channels, cfg)
    elif cfg.name == "csv":
        files, labels, classes = csv_split(cfg, split)
        source = file_source(FileList(files), labels, channels, classes, cfg)
    else:
        source = _named(cfg, split, channels)
    if len(source) == 0:
        where = cfg.path or cfg.name
        raise ValueError(f"no images found in {where} ({split}); supported files with data.format={cfg.format}: "
                         f"{' '.join(suffixes_for(cfg))}, searched recursively"
                         + ("" if cfg.reads_arrays else f" (data.format=array reads {' '.join(ARRAY_SUFFIXES)}, "
                                                          f"data.format=volume {' '.join(VOLUME_SUFFIXES)})"))
    return source


# per process: (data settings, the measured items' files) -> stats, for the last few (a library user's training and
# evaluation data built from one config whose data.mean is unset measure once)
_MEASURED: Recent[str, tuple[tuple[float, ...], tuple[float, ...]]] = Recent(8)


def _stamp(source: ImageSource, index: int) -> tuple[str, int, int]:
    """What item ``index`` is read from: its description, its file's size and time (0, 0 when held in memory or
    unreadable: the measurement leaves an unreadable file out)."""
    path, _ = source.file(index)
    try:
        stat = os.stat(path) if path is not None else None
    except OSError:
        stat = None
    return source.describe(index), stat.st_size if stat else 0, stat.st_mtime_ns if stat else 0


def _measured_stats(cfg: DataConfig, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Each band's mean / std over the training files (items), measured once per process for the same data settings
    and the same measured files, unchanged (a notebook's run after files were added, removed or rewritten measures
    them again, as a new process would)."""
    from openmae.data.build import source_for  # build imports this module

    # what decides the training files and their bands
    fields = ("name", "path", "root", "format", "array_layout", "slice_plane", "fourth_axis", "clip", "volume_norm",
              "norm_percentiles", "foreground", "min_foreground", "train_split", "max_samples", "holdout", "holdout_seed")
    source = source_for(cfg, cfg.train_split, channels, cfg.max_samples)
    items = [_stamp(source, i) for i in stats_items(len(source))]  # at most STATS_FILES stats
    key = repr(([getattr(cfg, f) for f in fields], channels, len(source), items))
    measured = _MEASURED.get(key)
    if measured is not None:
        return measured
    mean, std = _MEASURED[key] = band_stats(source)
    log.info("data.mean=[%s] data.std=[%s]: measured on %d training %s of %s (set both to keep them fixed)",
             ",".join(f"{v:.6g}" for v in mean), ",".join(f"{v:.6g}" for v in std), min(len(source), STATS_FILES),
             "slices" if cfg.format == "volume" else "files", cfg.path)
    return mean, std


def keep_stats(cfg: DataConfig, channels: int) -> None:
    """Write the normalisation :func:`stats_for` resolves into ``cfg`` (arrays: measured now), so that the run's
    ``config.yaml`` and checkpoints record the one it trained with: a rerun from that file uses it as is, and the
    commands that start from its weights take it (:mod:`openmae.data.normalization`)."""
    if cfg.mean is None:
        cfg.mean, cfg.std = stats_for(cfg, channels)


def stats_for(cfg: DataConfig, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation mean/std: configured, else measured on the training files (``data.format=array``: values are
    in the files' own units), else the dataset's own, else ImageNet's (0.5 for 1 channel)."""
    if cfg.mean is not None and cfg.std is not None:
        mean, std = tuple(cfg.mean), tuple(cfg.std)
    elif cfg.reads_arrays:
        mean, std = _measured_stats(cfg, channels)
    elif cfg.name in STATS:
        mean, std = STATS[cfg.name]
    else:
        mean, std = STATS["imagenet"] if channels == 3 else ((0.5,), (0.5,))
    if len(mean) == 1 and channels > 1:
        mean, std = mean * channels, std * channels
    if channels == 1 and len(mean) == 3:
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    if len(mean) != channels:
        raise ValueError(f"data.mean/std have {len(mean)} values but the model has {channels} channels")
    return mean, std
