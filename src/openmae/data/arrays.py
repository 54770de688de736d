"""Multi-band images stored as arrays (``data.format=array``): satellite tiles with any number of bands, medical scans
kept at their full bit depth. Each file holds one image as a NumPy ``.npy`` array, a TIFF (read with ``tifffile``),
a PNG (8 or 16 bits) or a DICOM file (:mod:`openmae.data.dicom`), laid out (H, W, C), (C, H, W) or (H, W); it is
read as float32 in its own units (no scaling to [0, 1]) and normalised per band by ``data.mean`` / ``data.std``,
which are measured on the training files when not set (:func:`band_stats`). Training crops read only their part of a
``.npy`` file or an uncompressed TIFF (memory-mapped: :class:`MappedCrop`, and the device path's workers), and only
the tiles or strips their box covers of a compressed TIFF (:class:`openmae.data.tiles.TiledBands`)."""

from __future__ import annotations

import zlib
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

from openmae.data.dicom import DICOM_SUFFIXES, read_dicom
from openmae.data.images import BadImageError
from openmae.data.ranks import shared_map
from openmae.data.tiles import TiledBands, missing_codec
from openmae.data.transforms import draw_box

ARRAY_SUFFIXES = (".npy", ".tif", ".tiff", ".png", *DICOM_SUFFIXES)
STATS_FILES = 256  # training files read (spread evenly) to measure each band's mean and std
STATS_PIXELS = 2**28  # pixels of each band measured at most, over all the files read (1M a file of 256)
STATS_WINDOW = 256  # the side of the windows a file larger than its share of STATS_PIXELS is measured on


def _load(path: Path, mapped: bool = False) -> np.ndarray | TiledBands:
    suffix = path.suffix.lower()
    if suffix == ".npy":  # an object array would need unpickling: refused
        return np.load(path, mmap_mode="r" if mapped else None, allow_pickle=False)
    if suffix in DICOM_SUFFIXES:
        return read_dicom(path)
    if suffix == ".png":  # 16-bit scans are often PNGs: their values as stored (PIL mode I;16 reads as uint16)
        with Image.open(path) as img:
            if img.mode == "P":  # a palette's stored values are indices into it: its colours instead
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            return np.asarray(img)
    try:
        import tifffile
    except ImportError:
        raise ImportError(f"{path}: multi-band TIFFs are read with tifffile; pip install tifffile "
                          "(or openmae[geo]), or save the arrays as .npy") from None
    with tifffile.TiffFile(path) as tif:
        image = tif.series[0]  # what tifffile.imread reads
        if mapped and image.dataoffset is not None:  # uncompressed and stored in one piece: mapped as a .npy is
            # (tifffile.memmap does the same, but would parse the file a second time for one that is not)
            return np.memmap(path, np.dtype(tif.byteorder + image.dtype.char), "r", image.dataoffset, image.shape, "C")
        tiled = TiledBands.of(path, tif) if mapped else None  # compressed or in strips apart: a crop's tiles
        return tiled if tiled is not None else tif.asarray()  # else decoded whole


def to_chw(array: np.ndarray | TiledBands, channels: int, layout: str = "auto", where: str = "array") -> np.ndarray | TiledBands:
    """``array`` as (C, H, W) with C == ``channels``. ``auto`` reads a 3-D array as (H, W, C) when its last axis has
    ``channels`` entries and its first does not, as (C, H, W) the other way round; a 2-D array is one band."""
    shape = array.shape
    if len(shape) == 2:
        layout = "hw"
    elif len(shape) != 3:
        raise ValueError(f"{where} has shape {shape}; an image array is (H, W, C), (C, H, W) or (H, W)")
    elif layout == "auto":
        first, last = shape[0] == channels, shape[-1] == channels
        if first and last:
            raise ValueError(f"{where} has shape {shape}: both its first and last axes could be the "
                             f"{channels} bands; set data.array_layout=hwc or chw")
        # neither axis: the shorter of the two is named as the bands in the message below
        layout = "hwc" if last or (not first and shape[-1] < shape[0]) else "chw"
    bands = 1 if layout == "hw" else shape[-1] if layout == "hwc" else shape[0]
    if bands != channels:
        raise ValueError(f"{where} has shape {shape}, read as {layout}: {bands} bands, but the model "
                         f"takes model.in_chans={channels}; set model.in_chans={bands} (or data.array_layout)")
    if isinstance(array, TiledBands):
        return array.bands_first(layout)
    return array[None] if layout == "hw" else np.moveaxis(array, -1, 0) if layout == "hwc" else array


def require_finite(chw: np.ndarray, path: Path | str) -> None:
    """Raises :class:`BadImageError` when ``chw`` holds NaN or infinite values (a nodata mask not filled)."""
    if np.issubdtype(chw.dtype, np.inexact):  # integers are always finite
        bad = chw.size - int(np.isfinite(chw).sum())
        if bad:
            raise BadImageError(f"{path}: holds NaN or infinite values ({bad} of {chw.size}); fill nodata pixels "
                                "(e.g. with the band's mean) before training")


def open_array(path: str | Path, channels: int, layout: str = "auto", mapped: bool = False) -> np.ndarray | TiledBands:
    """One image file's array as a (C, H, W) view in its own dtype and units, checked: numeric, ``channels`` bands,
    no NaN or infinite value (a nodata mask must be filled before training). ``mapped``: a ``.npy`` file or an
    uncompressed TIFF is memory-mapped, so that only the part a crop reads is loaded (an integer file is not read at
    all here; a float one is read once for the check); a tiled or striped TIFF is a :class:`TiledBands`, which
    decodes the tiles of the windows read from it, and checks only those. Raises :class:`BadImageError` on a file
    that cannot be used."""
    path = Path(path)
    try:
        array = _load(path, mapped)
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            raise ValueError(f"dtype {array.dtype} is not numeric")
        chw = to_chw(array, channels, layout, "the array")
    except (ImportError, BadImageError):
        raise
    # tifffile raises TiffFileError (a ValueError), its codecs zlib.error or imagecodecs' errors (RuntimeErrors)
    except (OSError, ValueError, SyntaxError, EOFError, RuntimeError, zlib.error) as err:
        missing_codec(path, err)
        raise BadImageError(f"{path}: {type(err).__name__}: {err}") from None
    if isinstance(chw, TiledBands):  # each window read is checked: the whole file is not decoded
        chw.check = partial(require_finite, path=path)
    else:
        require_finite(chw, path)
    return chw


def read_array(path: str | Path, channels: int, layout: str = "auto") -> torch.Tensor:
    """One image file as a (C, H, W) float32 tensor in the file's own units (:func:`open_array`'s checks)."""
    return torch.from_numpy(np.ascontiguousarray(open_array(path, channels, layout), dtype=np.float32))


def _measured_pixels(source, index: int, budget: int) -> np.ndarray:
    """The (C, N) pixels of item ``index`` that :func:`band_stats` measures, in the item's own dtype: all of them,
    or when the file holds more than ``budget`` pixels, those of ``budget`` / STATS_WINDOW² windows on a grid of
    that side, drawn from the item's index (the same every run), read from its memory-mapped or tiled view: a 4096²
    deflate scene in 256² tiles then costs one tile a window instead of being decoded whole."""
    if hasattr(source, "view"):
        chw, _ = source.view(index)
        bands, height, width = chw.shape
        side = STATS_WINDOW
        rows, cols = height // side, width // side  # the grid of whole windows
        count = budget // (side * side)
        if height * width > budget and count < rows * cols:
            cells = np.random.default_rng(index).choice(rows * cols, size=max(count, 1), replace=False)
            parts = []
            for cell in sorted(cells.tolist()):  # in storage order
                top, left = cell // cols * side, cell % cols * side
                # NaN: a mapped float file was checked whole when opened, a tiled one's windows are as they are read
                window = np.asarray(chw[:, top : top + side, left : left + side])
                parts.append(window.reshape(bands, -1))
            return np.concatenate(parts, axis=1)
    return source.load(index)[0].flatten(1).numpy()  # (C, H*W)


def stats_items(length: int, count: int = STATS_FILES) -> list[int]:
    """The items of a source of ``length`` that :func:`band_stats` reads: ``count`` spread evenly, or all."""
    return sorted({int(i * length / count) for i in range(count)}) if length > count else list(range(length))


def band_stats(source, count: int = STATS_FILES, pixels: int = STATS_PIXELS) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Each band's mean and standard deviation over every pixel of ``count`` items of ``source`` spread evenly
    (all of them when fewer), in float64; a file larger than its share of ``pixels`` is measured on windows of it
    (:func:`_measured_pixels`); unreadable files are left out. Inside :func:`openmae.data.ranks.shared_by_ranks` each
    rank reads every world-size-th file and the ranks exchange their files' sums, added in file order as one process
    adds them: the same numbers to the last bit; a rank whose part would take more than a few seconds reads it in
    forked processes (:func:`openmae.data.ranks.shared_map`), the same numbers again."""
    picked = stats_items(len(source), count)

    def measure(j: int) -> tuple[np.ndarray, np.ndarray, int]:  # a file's bands' sums, sums of squares, pixels
        x = _measured_pixels(source, picked[j], pixels // len(picked))  # (C, N)
        sums, squares = np.empty(len(x)), np.empty(len(x))
        # a band at a time in float64: the whole (C, N) in float64 and its square were two fresh allocations of
        # 27 MB a 13-band 512² file, whose page faults made 256 files take 37 s in a new process instead of 5 s.
        # numpy arrays, not tensors: a tensor returned by a forked process comes back through shared memory
        for b, band in enumerate(x):
            values = band.astype(np.float64)
            sums[b], squares[b] = values.sum(), (values * values).sum()
        return sums, squares, x.shape[1]

    total = total_sq = None
    measured = 0
    for part in shared_map(measure, len(picked), catch=(BadImageError,), processes=True, what="band statistics"):
        if isinstance(part, BadImageError):  # unreadable: left out
            continue
        s, sq, n = part
        total = s if total is None else total + s
        total_sq = sq if total_sq is None else total_sq + sq
        measured += n
    if total is None:
        raise ValueError("no readable array among the training files to measure data.mean/std on")
    total, total_sq = torch.from_numpy(total), torch.from_numpy(total_sq)  # (C,) float64
    mean = total / measured
    std = (total_sq / measured - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant band: only centred
    return tuple(mean.tolist()), tuple(std.tolist())


class Clipped:
    """A (C, H, W) view of a file's bands (a memory map, a tiled TIFF, an array) whose values read clipped to
    [``low``, ``high``] (``data.clip``) as float32: what is sliced out of it is clipped, so that crops, windows and
    the device path's cuts see the values a whole read does."""

    def __init__(self, chw, low: float, high: float) -> None:
        self.chw, self.low, self.high = chw, low, high
        self.shape = chw.shape
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, key) -> np.ndarray:
        return np.clip(np.asarray(self.chw[key], dtype=np.float32), self.low, self.high)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = np.clip(np.asarray(self.chw, dtype=np.float32), self.low, self.high)
        return whole if dtype is None else whole.astype(dtype)


def clipped(chw, bounds: tuple[float, float] | None):
    """``chw`` (a tensor, or a view of a file) with its values clipped to ``bounds`` (``data.clip``; None: as it is)."""
    if bounds is None:
        return chw
    return chw.clamp(*bounds) if isinstance(chw, torch.Tensor) else Clipped(chw, *bounds)


class MappedCrop:
    """A Compose that starts with a RandomResizedCrop, run on arrays (``data.format=array``) without reading whole
    files: a ``.npy`` file or an uncompressed TIFF is memory-mapped (a compressed one decodes the tiles the box
    covers), the crop draws its box on the array's shape (its own random draws, as it would on the whole array), and
    only the box is converted to float32 and resized;
    the other steps as they are. The same tensors as the Compose on the whole array: torchvision's resized crop is a crop, then a resize."""

    def __init__(self, plain, channels: int, layout: str) -> None:
        self.plain, self.channels, self.layout = plain, channels, layout
        self.first, *self.rest = plain.transforms

    @property
    def transforms(self) -> list:  # as the Compose's
        return self.plain.transforms

    def read(self, source, index: int) -> tuple[np.ndarray, int]:
        return source.view(index)  # a view of the file, or a volume's slices

    def __call__(self, chw: np.ndarray) -> torch.Tensor:
        top, left, height, width = draw_box(self.first, self.channels, chw.shape[1], chw.shape[2])
        crop = torch.from_numpy(np.ascontiguousarray(chw[:, top : top + height, left : left + width], np.float32))
        out = TF.resize(crop, list(self.first.size), interpolation=self.first.interpolation, antialias=self.first.antialias)
        for step in self.rest:
            out = step(out)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.plain}, layout={self.layout})"


def with_mapped_crop(transform, channels: int, layout: str):
    """``transform`` reading only each crop's part of an array file when it starts with a RandomResizedCrop
    (pretraining's, fine-tuning's for arrays), else ``transform`` itself (evaluation's resize needs the whole)."""
    first = getattr(transform, "transforms", [None])[0]
    return MappedCrop(transform, channels, layout) if isinstance(first, T.RandomResizedCrop) else transform
