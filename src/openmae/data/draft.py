"""Large JPEGs on the CPU path: decoded at the reduced scale that a crop (or a resize) allows.

RandomResizedCrop throws most of a large photo's pixels away: a 3000x2250 photo's crop of a fifth to all of it
becomes 224x224. :class:`DraftCrop` draws the crop box from the file's header (the very draws of torchvision's
``RandomResizedCrop`` and ``RandomHorizontalFlip``, so boxes and flips equal ``pretrain_transform``'s), then has
libjpeg decode the photo at 1/2, 1/4 or 1/8 of its size (scaling in the DCT domain; PIL's ``draft``) when the box
still spans at least twice the output's pixels in each direction at that scale, and resizes from there (the box in
the smaller image's fractional coordinates). Twice is Pillow's own margin for its thumbnails (``reducing_gap``). On
64 enlarged ImageNet photos (918-5454 px a side) the crops came out 0.2 grey levels from a full-size decode on
average, 99% of pixels within 2, in a fifth of the time (docs/benchmarks.md). Crops that allow no reduction, and
files other than JPEGs, go through ``pretrain_transform``'s very steps, with the same pixels.
:class:`DraftCrop` serves fine-tuning's crop too (timm's), and :class:`DraftResize` evaluation's resize and
centre crop.

Written here because neither torchvision's transforms nor timm's decode at a reduced scale: both take decoded
images.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import v2 as T
from torchvision.transforms.functional import resized_crop as resized_crop_v1
from torchvision.transforms.v2 import functional as TF

from openmae.data.datasets import ImageSource
from openmae.data.images import JPEG_SUFFIXES, Header, open_image, open_image_or_header
from openmae.data.transforms import draw_box

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
    return min((1, *REDUCTIONS), key=lambda s: abs(item.width / s - img.width))


@dataclass(frozen=True)
class JpegFile:
    """A JPEG not decoded yet: its path and upright size (from the header)."""

    path: Path
    height: int
    width: int


def read_jpeg_header(source: ImageSource, index: int, channels: int,
                     may_reduce: Callable[[int, int], bool]) -> tuple[JpegFile | Image.Image, int]:
    """Item ``index`` of ``source``: a JPEG whose (upright height, width) ``may_reduce`` as its header only, to decode
    later; any other image decoded at once (from the same opening of the file, as ``source.load`` decodes it)."""
    path, label = source.file(index)
    if path is not None and path.suffix.lower() in JPEG_SUFFIXES:
        out = open_image_or_header(path, channels,
                                   lambda head: head.format == "JPEG" and may_reduce(head.height, head.width))
        return (JpegFile(path, out.height, out.width) if isinstance(out, Header) else out), label
    return source.load(index)


class _Draft(ABC):
    """A Compose whose first step this wrapper runs on a JPEG decoded at a reduced scale; the other steps as they are."""

    def __init__(self, plain, channels: int, gap: float = REDUCING_GAP) -> None:
        self.plain, self.channels, self.gap = plain, channels, gap
        self.first, *self.rest = plain.transforms

    @property
    def transforms(self) -> list:  # as the Compose's (tests and callers look for steps there)
        return self.plain.transforms

    def read(self, source: ImageSource, index: int) -> tuple[JpegFile | Image.Image, int]:
        return read_jpeg_header(source, index, self.channels, self.may_reduce)

    @abstractmethod
    def may_reduce(self, height: int, width: int) -> bool:
        """Whether the first step could decode an image of this size at a reduced scale (else it decodes at once)."""

    def __call__(self, item: JpegFile | Image.Image) -> torch.Tensor:
        if not isinstance(item, JpegFile):
            return self.plain(item)
        out = self.first_step(item)
        for step in self.rest:
            out = step(out)
        return out

    @abstractmethod
    def first_step(self, item: JpegFile) -> Image.Image:
        """The first step's output for ``item``, decoded at the scale the step allows."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.plain}, reducing_gap={self.gap})"


class DraftCrop(_Draft):
    """A training Compose that starts with a random resized crop (torchvision's ``RandomResizedCrop``: pretraining's
    ``pretrain_transform``; timm's ``RandomResizedCropAndInterpolation``: fine-tuning's recipe), reading a JPEG at
    the smallest scale the crop's box allows (the module's docstring). ``read(source, index)`` is the loader's read
    (``SeededSamples``): a JPEG file is left undecoded until the call, which runs under the sample's seed."""

    def may_reduce(self, height: int, width: int) -> bool:  # the whole image is the largest box a crop draws
        return reduction(height, width, tuple(self.first.size), self.gap) > 1

    def first_step(self, item: JpegFile) -> Image.Image:
        crop = self.first
        top, left, height, width = draw_box(crop, self.channels, item.height, item.width)
        if isinstance(crop, T.RandomResizedCrop):
            interpolation, kernel = crop.interpolation, partial(TF.resized_crop, antialias=crop.antialias)
        else:  # timm's, which may draw its interpolation too
            interpolation = random.choice(crop.interpolation) if isinstance(crop.interpolation, (tuple, list)) \
                else crop.interpolation
            kernel = resized_crop_v1
        size = tuple(crop.size)
        img = open_image(item.path, self.channels, reduction(height, width, size, self.gap))
        if img.size == (item.width, item.height):  # full size: the crop's own kernel, the same pixels
            return kernel(img, top, left, height, width, list(size), interpolation)
        f = 1 / decoded_scale(item, img)  # the box at the smaller scale (fractional: PIL's resize takes a float box)
        return img.resize((size[1], size[0]), Image.Resampling[interpolation.name],
                          box=(left * f, top * f, (left + width) * f, (top + height) * f))


class DraftResize(_Draft):
    """``eval_transform`` (resize, centre crop, normalise) reading a large JPEG at the smallest scale its resize allows:
    the image's short side (or each side, for a non-square size) keeps twice the resized one's pixels."""

    def _plan(self, height: int, width: int) -> tuple[int, int, int]:
        """The reduction for an image of this size, and the (height, width) the resize gives it."""
        size = list(self.first.size)  # [short side] or [height, width]
        if len(size) == 1:
            short, long = sorted((height, width))
            r = reduction(short, short, (size[0], size[0]), self.gap)
            # torchvision's rule for the output size, on the full size
            new_short, new_long = size[0], int(size[0] * long / short)
            return (r, new_short, new_long) if height <= width else (r, new_long, new_short)
        return reduction(height, width, (size[0], size[1]), self.gap), size[0], size[1]

    def may_reduce(self, height: int, width: int) -> bool:
        return self._plan(height, width)[0] > 1

    def first_step(self, item: JpegFile) -> Image.Image:
        r, out_h, out_w = self._plan(item.height, item.width)
        img = open_image(item.path, self.channels, r)
        if img.size == (item.width, item.height):
            return self.first(img)
        # from the smaller image, the same extent of the photo (its last pixels may be partial ones at that scale)
        scale = decoded_scale(item, img)
        return img.resize((out_w, out_h), Image.Resampling[self.first.interpolation.name],
                          box=(0, 0, item.width / scale, item.height / scale))


def with_draft(transform, channels: int):
    """``transform`` reading large JPEGs at a reduced scale when it starts with a step that allows it (a random
    resized crop, or evaluation's resize), else ``transform`` itself."""
    from timm.data.transforms import RandomResizedCropAndInterpolation  # fine-tuning's crop (timm: imported late)

    first = getattr(transform, "transforms", [None])[0]
    if isinstance(first, (T.RandomResizedCrop, RandomResizedCropAndInterpolation)):
        return DraftCrop(transform, channels)
    if isinstance(first, T.Resize):
        return DraftResize(transform, channels)
    return transform
