"""A TIFF stored in tiles or strips (a cloud-optimised GeoTIFF, a compressed scene) read a window at a time: a
training crop decodes only the tiles its box covers (:class:`TiledBands`), not the whole file, so that crops of
large compressed scenes cost what the crop holds.

tifffile decodes each tile (``TiffPage.decode``: every compression, predictor and byte order it reads); reading
only some of a page's tiles is not in its API without zarr (``aszarr``), which openmae does not depend on, so the
tiles a window covers are picked and placed here."""

from __future__ import annotations

import copy
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from openmae.data.images import BadImageError


def missing_codec(path: Path, err: Exception) -> None:
    """Raises ImportError when ``err`` is tifffile's for a compression it needs imagecodecs for (LZW, JPEG, ...):
    every such file would fail alike, so it is the setup to fix, not a file to skip."""
    if "imagecodecs" in str(err):
        raise ImportError(f"{path}: {err}; pip install imagecodecs (or openmae[geo])") from None


class TiledBands:
    """The first image of a tiled or striped TIFF as a lazy array: ``shape`` is what ``tifffile.imread`` returns
    ((H, W), (H, W, C) with the bands interleaved, (C, H, W) with the bands in planes or pages); after
    :meth:`bands_first`, ``shape`` is (C, H, W) and ``x[:, rows, cols]`` decodes the tiles that window covers and
    returns it as a (C, h, w) array in the file's dtype (sparse tiles, stored as no bytes, read as 0). ``check`` is
    called on each window read (the NaN check of float files)."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype, band_axis: str, pages: list,
                 decode: Callable, jpegtables: bytes | None, tile: tuple[int, int], planes: int,
                 check: Callable[[np.ndarray], None] | None = None) -> None:
        self.path, self.shape, self.dtype, self.band_axis = path, shape, dtype, band_axis
        self.pages, self.decode, self.jpegtables, self.tile, self.planes = pages, decode, jpegtables, tile, planes
        self.check = check
        self.chw = False
        self.bands = shape[2] if band_axis == "last" else 1 if band_axis == "none" else shape[0]
        self.size = shape[:2] if band_axis == "last" else shape[-2:]  # (H, W)

    @classmethod
    def of(cls, path: Path, tif) -> TiledBands | None:
        """``tif``'s first series (an open ``tifffile.TiffFile``) when it is a 2-D image of one or more bands whose
        pages are stored in tiles or strips, else None (read it whole)."""
        series = tif.series[0]
        key = series.keyframe
        if key.imagedepth != 1 or len(series.shape) not in (2, 3) or key.dataoffsets is None:
            return None
        height, width = key.imagelength, key.imagewidth
        pages = list(series.pages)
        if series.axes == "YX" and len(pages) == 1:
            band_axis, planes = "none", 1
        elif series.axes == "YXS" and len(pages) == 1 and key.planarconfig == 1:
            band_axis, planes = "last", 1  # the bands interleaved within each tile
        elif series.axes == "SYX" and len(pages) == 1 and key.planarconfig == 2:
            band_axis, planes = "first", series.shape[0]  # a plane of tiles a band
        elif series.axes[1:] == "YX" and len(pages) == series.shape[0] and key.samplesperpixel == 1:
            band_axis, planes = "first", 1  # a page a band
        else:
            return None
        if series.shape[-2:] != (height, width) and series.shape[:2] != (height, width):
            return None
        tile = (key.tilelength, key.tilewidth) if key.is_tiled else (min(key.rowsperstrip or height, height), width)
        per_plane = -(-height // tile[0]) * -(-width // tile[1])
        if any(p is None or p.dataoffsets is None or len(p.dataoffsets) != planes * per_plane for p in pages):
            return None
        pages = [(tuple(p.dataoffsets), tuple(p.databytecounts)) for p in pages]
        return cls(path, tuple(series.shape), np.dtype(series.dtype).newbyteorder("="), band_axis, pages, key.decode,
                   key.jpegtables, tile, planes)

    def bands_first(self, layout: str) -> TiledBands | np.ndarray:
        """As (C, H, W) for ``layout`` (``hw``, ``hwc`` or ``chw``, as :func:`openmae.data.arrays.to_chw` read the
        shape): lazy when the layout names the file's own band axis, else the whole image decoded and rearranged."""
        if {"hw": "none", "hwc": "last", "chw": "first"}[layout] != self.band_axis:
            whole = self.read_whole()
            return whole[None] if layout == "hw" else np.moveaxis(whole, -1, 0) if layout == "hwc" else whole
        out = copy.copy(self)  # the same file and tiles, read band first
        out.chw = True
        out.shape = (self.bands, *self.size)
        return out

    def read_whole(self) -> np.ndarray:
        """The image in its native shape (``shape`` before :meth:`bands_first`)."""
        chw = self._window(0, self.size[0], 0, self.size[1])
        return chw[0] if self.band_axis == "none" else np.moveaxis(chw, 0, -1) if self.band_axis == "last" else chw

    def __getitem__(self, key) -> np.ndarray:
        if not self.chw or not (isinstance(key, tuple) and len(key) == 3 and key[0] == slice(None)
                                and all(isinstance(k, slice) and k.step in (None, 1) for k in key[1:])):
            raise TypeError(f"{self.path}: a tiled TIFF's bands are read as x[:, rows, cols] (unit steps), not {key}")
        (r0, r1, _), (c0, c1, _) = key[1].indices(self.shape[1]), key[2].indices(self.shape[2])
        return self._window(r0, max(r0, r1), c0, max(c0, c1))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[:, :, :] if self.chw else self.read_whole()
        return whole if dtype is None else whole.astype(dtype)

    def _window(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Rows r0:r1 and columns c0:c1 of every band, (C, h, w), from the tiles that cover them."""
        tl, tw = self.tile
        height, width = self.size
        out = np.zeros((self.bands, r1 - r0, c1 - c0), self.dtype)
        if r1 == r0 or c1 == c0:
            return out
        across = -(-width // tw)
        cells = [ty * across + tx for ty in range(r0 // tl, (r1 - 1) // tl + 1) for tx in range(c0 // tw, (c1 - 1) // tw + 1)]
        per_plane = -(-height // tl) * across
        wanted = []  # (offset, bytes, page, segment index within the page)
        for page, (offsets, counts) in enumerate(self.pages):
            for plane in range(self.planes):
                wanted += [(offsets[i], counts[i], page, i) for i in (plane * per_plane + c for c in cells)]
        try:
            with open(self.path, "rb") as fh:
                for offset, count, page, index in sorted(wanted):
                    if not count:  # a sparse tile: the fill value
                        continue
                    fh.seek(offset)
                    data = fh.read(count)
                    segment, (plane, _, y, x, _), _ = self.decode(data, index, jpegtables=self.jpegtables)
                    segment = segment[0]  # (tile rows, tile columns, samples)
                    ys, xs = slice(max(r0, y), min(r1, y + segment.shape[0])), slice(max(c0, x), min(c1, x + segment.shape[1]))
                    part = segment[ys.start - y : ys.stop - y, xs.start - x : xs.stop - x]  # (h', w', samples)
                    band = page if len(self.pages) > 1 else plane
                    target = out[:, ys.start - r0 : ys.stop - r0, xs.start - c0 : xs.stop - c0]
                    if self.band_axis == "last":
                        target[:] = np.moveaxis(part, -1, 0)
                    else:
                        target[band] = part[..., 0]
        except (OSError, ValueError, RuntimeError, zlib.error) as err:  # imagecodecs' errors are RuntimeErrors
            missing_codec(self.path, err)
            raise BadImageError(f"{self.path}: {type(err).__name__} decoding its tiles: {err}") from None
        if self.check is not None:
            self.check(out)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path}, shape={self.shape}, tile={self.tile})"
