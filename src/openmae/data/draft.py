"""The CPU path's pretraining augmentation for large JPEGs: decode at a reduced scale what the crop allows.

RandomResizedCrop throws most of a large photo's pixels away: a 3000x2250 photo's crop of a fifth to all of it
becomes 224x224. :class:`DraftCrop` draws the crop box from the file's header (the very draws of torchvision's
``RandomResizedCrop`` and ``RandomHorizontalFlip``, so boxes and flips equal ``pretrain_transform``'s), then has
libjpeg decode the photo at 1/2, 1/4 or 1/8 of its size (scaling in the DCT domain; PIL's ``draft``) when the box
still spans at least twice the output's pixels in each direction at that scale, and resizes from there (the box in
the smaller image's fractional coordinates). Twice is Pillow's own margin for its thumbnails (``reducing_gap``). On
64 enlarged ImageNet photos (918-5454 px a side) the crops came out 0.2 grey levels from a full-size decode on
average, 99% of pixels within 2, in a fifth of the time (docs/benchmarks.md). Crops that allow no reduction, and
files other than JPEGs, go through ``pretrain_transform``'s very steps, with the same pixels.
:class:`DraftResize` does the same for evaluation's resize and centre crop.

Written here because neither torchvision's transforms nor timm's decode at a reduced scale: both take decoded
images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

from openmae.data.datasets import ImageSource
from openmae.data.images import JPEG_SUFFIXES, open_image, read_header
from openmae.data.transforms import draw_crop

REDUCING_GAP = 2.0  # the box keeps at least this many pixels per output pixel, each way, after the reduction
REDUCTIONS = (8, 4, 2)  # the scales libjpeg decodes at, besides 1


def reduction(box_height: int, box_width: int, out_size: tuple[int, int], gap: float = REDUCING_GAP) -> int:
    """The largest of 8, 4, 2 by which a ``box_height`` x ``box_width`` crop can be decoded smaller and still span
    ``gap`` times the output's pixels in each direction; 1 when none can."""
    for r in REDUCTIONS:
        if box_height / r >= gap * out_size[0] and box_width / r >= gap * out_size[1]:
            return r
    return 1


def decoded_scale(item: JpegFile, img: Image.Image) -> int:
    """By how much libjpeg scaled ``item`` down (1, 2, 4 or 8): its sides are the full ones divided by it, rounded
    up, so the ratio of the sizes is a little off for the exact scale."""
    return round(item.width / img.width)


@dataclass(frozen=True)
class JpegFile:
    """A JPEG not decoded yet: its path and upright size (from the header)."""

    path: Path
    height: int
    width: int


def read_jpeg_header(source: ImageSource, index: int) -> tuple[JpegFile | Image.Image, int]:
    """Item ``index`` of ``source``: a JPEG file's header only, any other image decoded (as ``source.load``)."""
    path, label = source.file(index)
    if path is not None and path.suffix.lower() in JPEG_SUFFIXES:
        head = read_header(path)
        if head.format == "JPEG":
            return JpegFile(path, head.height, head.width), label
    return source.load(index)


class DraftCrop:
    """RandomResizedCrop(scale, bicubic) + horizontal flip + normalise, ``pretrain_transform``'s, reading JPEGs at
    the smallest scale the crop allows (the module's docstring). ``read(source, index)`` is the loader's read
    (``SeededSamples``): a JPEG file is left undecoded until the call, which runs under the sample's seed."""

    def __init__(self, plain: T.Compose, channels: int, gap: float = REDUCING_GAP) -> None:
        """``plain``: ``pretrain_transform``'s Compose (crop, flip, normalise), whose steps this one takes."""
        self.plain, self.channels, self.gap = plain, channels, gap
        self.crop, flip, self.to_tensor = plain.transforms
        self.hflip, self.size = flip.p, tuple(self.crop.size)

    def read(self, source: ImageSource, index: int) -> tuple[JpegFile | Image.Image, int]:
        return read_jpeg_header(source, index)

    def __call__(self, item: JpegFile | Image.Image) -> torch.Tensor:
        if not isinstance(item, JpegFile):
            return self.plain(item)
        top, left, height, width, flip = draw_crop(self.crop, self.hflip, self.channels, item.height, item.width)
        img = open_image(item.path, self.channels, reduction(height, width, self.size, self.gap))
        if img.size == (item.width, item.height):  # full size: pretrain_transform's own steps
            out = TF.resized_crop(img, top, left, height, width, self.crop.size, self.crop.interpolation,
                                  antialias=self.crop.antialias)
        else:  # the box in the smaller image's coordinates (fractional: PIL's resize takes a float box)
            f = 1 / decoded_scale(item, img)
            out = img.resize((self.size[1], self.size[0]), Image.Resampling.BICUBIC,
                             box=(left * f, top * f, (left + width) * f, (top + height) * f))
        return self.to_tensor(TF.horizontal_flip(out) if flip else out)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.plain}, reducing_gap={self.gap})"


class DraftResize:
    """``eval_transform`` (resize, centre crop, normalise) reading a large JPEG at the smallest scale its resize allows:
    the image's short side (or each side, for a non-square size) keeps twice the resized one's pixels."""

    def __init__(self, plain: T.Compose, channels: int, gap: float = REDUCING_GAP) -> None:
        """``plain``: ``eval_transform``'s Compose (resize, centre crop, normalise)."""
        self.plain, self.channels, self.gap = plain, channels, gap
        self.size = list(plain.transforms[0].size)  # [short side] or [height, width]

    def read(self, source: ImageSource, index: int) -> tuple[JpegFile | Image.Image, int]:
        return read_jpeg_header(source, index)

    def __call__(self, item: JpegFile | Image.Image) -> torch.Tensor:
        if not isinstance(item, JpegFile):
            return self.plain(item)
        if len(self.size) == 1:
            short = min(item.height, item.width)
            r = reduction(short, short, (self.size[0], self.size[0]), self.gap)
        else:
            r = reduction(item.height, item.width, (self.size[0], self.size[1]), self.gap)
        img = open_image(item.path, self.channels, r)
        if img.size == (item.width, item.height):
            return self.plain(img)
        # the full-size image's resize, from the smaller one: the same output size (torchvision's rule, on the
        # full size), from the same extent of the photo (its last pixels may be partial ones at the smaller scale)
        scale = decoded_scale(item, img)
        if len(self.size) == 1:
            short, long = sorted((item.height, item.width))
            new_short, new_long = self.size[0], int(self.size[0] * long / short)
            out_h, out_w = (new_short, new_long) if item.height <= item.width else (new_long, new_short)
        else:
            out_h, out_w = self.size
        out = img.resize((out_w, out_h), Image.Resampling.BICUBIC, box=(0, 0, item.width / scale, item.height / scale))
        for step in self.plain.transforms[1:]:  # centre crop, normalise
            out = step(out)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.plain}, reducing_gap={self.gap})"
