"""Decoding any image file into a PIL image with the model's channel count, with defined outcomes for
odd inputs: grayscale, RGBA, palette (with transparency), CMYK, 16-bit, EXIF rotation, decompression bombs; phones'
HEIC / HEIF photos through pillow-heif (``openmae[heif]``).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".avif", ".heic",
                  ".heif")
HEIF_SUFFIXES = (".heic", ".heif")  # a phone's photos (an iPhone's by default): read through pillow-heif
JPEG_SUFFIXES = (".jpg", ".jpeg")
EXIF_ORIENTATION = 0x0112
TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


class BadImageError(RuntimeError):
    """A file could not be decoded as an image; the message names the file and the reason."""


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer / float single-channel images -> 8-bit L, scaled by the type's range."""
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        return img
    if arr.dtype in (np.uint16, np.int32, np.int16) and img.mode.startswith("I"):
        arr = arr.astype(np.float64) / (65535.0 if arr.max(initial=0) > 255 or img.mode == "I;16" else 255.0)
    else:
        arr = arr.astype(np.float64)
        hi = arr.max(initial=0.0)
        arr = arr / hi if hi > 1 else arr
    return Image.fromarray((np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8), mode="L")


def to_channels(img: Image.Image, channels: int) -> Image.Image:
    """Convert to ``L`` (1 channel) or ``RGB`` (3 channels); alpha is composited onto black."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        img = _to_8bit(img)
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    if channels == 1:
        return img.convert("L")
    if channels == 3:
        return img.convert("RGB")
    raise ValueError(f"images can be decoded to 1 or 3 channels, not {channels}; multi-band files are read with "
                     f"data.format=array")


@dataclass(frozen=True)
class Header:
    """What a file's header says, read without decoding: its format and mode, its size upright (after the EXIF
    orientation, which is still to apply after decoding) and whether a JPEG is progressive."""

    format: str | None
    mode: str
    height: int
    width: int
    orientation: int
    progressive: bool


def _header(img: Image.Image) -> Header:
    width, height = img.size
    orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    if orientation in TRANSPOSED:
        width, height = height, width
    return Header(img.format, img.mode, height, width, orientation, bool(img.info.get("progressive")))


@functools.cache  # once a process; a missing package raises each time (not cached)
def _register_heif() -> None:
    """Register pillow-heif's opener with PIL, which reads no HEIC / HEIF itself (AVIF, the same container with
    another codec, it reads since Pillow 11.2)."""
    import pillow_heif

    pillow_heif.register_heif_opener()


def _heif(path: str | Path) -> None:
    """:func:`_register_heif`; ImportError names the package when it is missing."""
    try:
        _register_heif()
    except ImportError:
        raise ImportError(f"{path}: HEIC / HEIF photos are read with pillow-heif; pip install pillow-heif (or "
                          "openmae[heif]), or convert them to JPEG") from None


def open_image_or_header(path: str | Path, channels: int, keep_encoded: Callable[[Header], bool] | None = None,
                         reduce: int = 1) -> Image.Image | Header:
    """``path`` opened once: its :class:`Header` alone when ``keep_encoded(header)`` says so (the caller decodes it
    later), else decoded to ``channels``. ``reduce`` > 1: a JPEG is decoded at about 1/``reduce`` of its size (1/2,
    1/4 or 1/8: libjpeg scales in the DCT domain, through PIL's ``draft``, and saves most of the decoding); other
    formats decode fully. Raises :class:`BadImageError` on anything that is not a readable image, decompression
    bombs included."""
    if str(path).lower().endswith(HEIF_SUFFIXES):
        _heif(path)
    try:
        with warnings.catch_warnings():
            # PIL warns from MAX_IMAGE_PIXELS (a 100-MP camera's photo) and refuses from twice that: the refusal is
            # the limit (set_pixel_limit), the warning would repeat for every such photo read
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if keep_encoded is not None and keep_encoded(head := _header(img)):
                    return head
                if reduce > 1:  # draft picks the smallest scale whose size is at least the size asked for
                    img.draft(img.mode, (max(1, img.width // reduce), max(1, img.height // reduce)))
                img.load()
                return to_channels(img, channels)
    except Image.DecompressionBombError as err:
        raise BadImageError(f"{path}: DecompressionBombError: {err} If it is a genuine image, raise "
                            f"data.max_image_pixels (now {2 * Image.MAX_IMAGE_PIXELS:,})") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise BadImageError(f"{path}: {type(err).__name__}: {err}") from None


PIL_PIXEL_LIMIT = Image.MAX_IMAGE_PIXELS  # PIL's own: it refuses images of more than twice this many pixels


def set_pixel_limit(pixels: int) -> None:
    """Refuse images of more than ``pixels`` pixels (``data.max_image_pixels``; 0: PIL's limit) in this process and
    the loader workers it forks. PIL keeps its limit in a module global, which this sets."""
    Image.MAX_IMAGE_PIXELS = pixels // 2 if pixels else PIL_PIXEL_LIMIT


def read_header(path: str | Path) -> Header:
    """The header of ``path``; raises :class:`BadImageError` when it is not an image's."""
    return open_image_or_header(path, 0, keep_encoded=lambda head: True)


def open_image(path: str | Path, channels: int, reduce: int = 1) -> Image.Image:
    """Decode ``path`` (``reduce``: see :func:`open_image_or_header`); raises :class:`BadImageError` on anything
    that is not a readable image."""
    return open_image_or_header(path, channels, reduce=reduce)


