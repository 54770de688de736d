"""Pretraining augmentation on the training device (``data.device_augment``).

The loader's workers only read: a JPEG file stays encoded (its header gives the size), any other image is
decoded on the CPU as usual; then, under the sample's own seed, they draw the crop box and the flip with the
very calls torchvision's ``RandomResizedCrop`` and ``RandomHorizontalFlip`` make, so the boxes equal the
CPU path's. A worker hands its batch over as one buffer of bytes (:class:`PlannedBatch`). On the training
device, the JPEGs of a batch are decoded together (a batched ``decode_jpeg``, nvJPEG on CUDA: torchvision's or
TorchCodec's, ``data.jpeg_decoder``, :mod:`openmae.data.jpeg`), then
the crops are resized (bicubic, antialiased) and flipped, on a GPU all in a few batched products
(``openmae.data.resize``), and the batch is normalised. A 16-core GPU machine then spends its CPU time on
reading files only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from openmae.data.datasets import ImageSource
from openmae.data.draft import JpegFile, decoded_scale, read_jpeg_header, reduction
from openmae.data.images import JPEG_SUFFIXES, TRANSPOSED, BadImageError, open_image, read_header
from openmae.data.jpeg import jpeg_decoder
from openmae.data.resize import resize_crops, resize_each
from openmae.data.transforms import draw_box


@dataclass
class RawImage:
    """A file's bytes still encoded as JPEG (``encoded``), or a decoded (C, H, W) image: uint8 pixels, or float32
    bands in their own units (``data.format=array``).

    numpy, not torch: a batch holds hundreds of these and worker processes would hand each torch tensor
    over as its own shared-memory file descriptor (the batch then fails with EBADF or EMFILE); a batch
    crosses as one :class:`PlannedBatch` instead."""

    data: np.ndarray
    encoded: bool
    height: int  # after the EXIF orientation is applied
    width: int
    name: str
    orientation: int = 1  # EXIF orientation (1-8) still to apply after decoding an encoded JPEG
    bands: bool = False  # an array of bands (data.format=array): its crop leaves as float32, in the file's units


def orient(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """(C, H, W) image turned upright as its EXIF orientation says (PIL's ``ImageOps.exif_transpose``).

    Written here because torchvision's CUDA decoder ignores ``apply_exif_orientation`` (the CPU decoder
    honours it); doing it ourselves gives the same pixels on every device. Values outside 1-8 change nothing,
    as in PIL."""
    if orientation in TRANSPOSED:
        img = img.transpose(-2, -1)
    flips = {2: (-1,), 3: (-2, -1), 4: (-2,), 6: (-1,), 7: (-2, -1), 8: (-2,)}.get(orientation)
    return img.flip(flips) if flips else img


@dataclass
class PlannedCrop:
    """What a worker hands over for one image: the pixels (maybe encoded), its crop box and flip."""

    image: RawImage
    top: int
    left: int
    height: int
    width: int
    flip: bool


@dataclass
class PlannedBatch:
    """A batch of planned crops as a loader worker hands it over: every image's bytes (encoded JPEG, or decoded
    (C, H, W) pixels) in one buffer, which reaches the training process as one shared-memory block instead
    of hundreds of pickled arrays (a few hundred KB each for photos), and the rest as plain lists (quick to pickle).
    The buffer is uint8 (JPEG bytes and pixels), or float32 for arrays of bands (a dataset holds one or the other)."""

    data: torch.Tensor  # (total values,) uint8 or float32
    offsets: list[int]  # image i is data[offsets[i] : offsets[i + 1]]
    encoded: list[bool]
    sizes: list[tuple[int, int]]  # (height, width), upright
    orientations: list[int]  # EXIF orientation still to apply after decoding
    names: list[str]
    boxes: list[tuple[int, int, int, int]]  # crop (top, left, height, width)
    flips: list[bool]

    @classmethod
    def pack(cls, crops: list[PlannedCrop]) -> PlannedBatch:
        arrays = [c.image.data.reshape(-1) for c in crops]
        offsets = np.cumsum([0] + [a.size for a in arrays]).tolist()
        data = torch.from_numpy(np.concatenate(arrays)) if arrays else torch.empty(0, dtype=torch.uint8)
        images = [c.image for c in crops]
        return cls(data, offsets, [i.encoded for i in images], [(i.height, i.width) for i in images],
                   [i.orientation for i in images], [i.name for i in images],
                   [(c.top, c.left, c.height, c.width) for c in crops], [c.flip for c in crops])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def image(self, i: int, data: torch.Tensor | None = None) -> torch.Tensor:
        """Image ``i``'s encoded bytes (B,), or its decoded pixels (C, H, W): a view of the buffer (or of ``data``,
        a copy of it on another device)."""
        flat = (self.data if data is None else data)[self.offsets[i] : self.offsets[i + 1]]
        return flat if self.encoded[i] else flat.view(-1, *self.sizes[i])

    def pin_memory(self) -> PlannedBatch:
        """Pinned for the decoded images' non-blocking copies; JPEG bytes only go to the decoder, which reads them
        from host memory itself: a batch of JPEGs stays as it is (pinning would copy every byte for nothing)."""
        return self if all(self.encoded) else replace(self, data=self.data.pin_memory())


def read_raw(source: ImageSource, index: int, keep_jpegs: bool = True) -> tuple[RawImage, int]:
    """A baseline L / RGB JPEG file as its bytes (``keep_jpegs``); anything else decoded here on the CPU, progressive
    JPEGs included: nvJPEG's batched (hardware) decoding takes baseline ones only and torchvision decodes the others
    one at a time with their entropy decoding on the training process's CPU, which a worker does better."""
    path, label = source.file(index)
    if keep_jpegs and path is not None and path.suffix.lower() in JPEG_SUFFIXES:
        head = read_header(path)  # size, mode, EXIF orientation, progressive or not
        if head.format == "JPEG" and head.mode in ("L", "RGB") and not head.progressive:
            return RawImage(np.fromfile(path, dtype=np.uint8), True, head.height, head.width, str(path),
                            head.orientation), label
    img, label = source.load(index)  # decoded and converted as on the CPU path
    return raw_pixels(img, source.describe(index)), label


def raw_pixels(img: Image.Image, name: str) -> RawImage:
    """A decoded image as a :class:`RawImage` of (C, H, W) uint8 pixels."""
    arr = np.array(img, dtype=np.uint8)  # a writable copy (torch.from_numpy on the device side)
    arr = np.ascontiguousarray(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))  # (C, H, W)
    return RawImage(arr, False, arr.shape[1], arr.shape[2], name)


class PlanCrops:
    """Worker side of ``data.device_augment``: runs under the sample's seed like any other transform.

    ``device_decode=False`` (``data.device_decode``): the worker decodes JPEGs too, as every other image. An image
    decoded here leaves with its crop's pixels only (fewer bytes to hand over; the same pixels reach the resize).
    With ``jpeg_draft`` too, a large JPEG is decoded at the reduced scale its crop allows (``openmae.data.draft``);
    its crop's pixels then leave at that scale, the box rounded to whole pixels there. ``bands`` (``data.format=array``
    or ``volume``): files of bands, of which the crop reads only its part (memory-mapped, or the tiles it covers), or
    a volume's slices; the crop's bands leave as float32."""

    def __init__(self, img_size: tuple[int, int], scale: tuple[float, float], hflip: float, channels: int,
                 device_decode: bool = True, jpeg_draft: bool = False, bands: bool = False) -> None:
        self.crop = T.RandomResizedCrop(img_size, scale=scale, interpolation=InterpolationMode.BICUBIC, antialias=True)
        self.hflip, self.channels, self.device_decode = hflip, channels, device_decode
        self.draft = jpeg_draft and not device_decode
        self.size = tuple(img_size)
        self.bands = bands  # data.format=array or volume: files of bands

    def read(self, source: ImageSource, index: int) -> tuple[RawImage | JpegFile, int]:
        if self.bands:  # memory-mapped or tiled: the crop reads only its part of the file
            chw, label = source.view(index)
            return RawImage(chw, False, chw.shape[1], chw.shape[2], source.describe(index), bands=True), label
        if self.draft:
            item, label = read_jpeg_header(source, index, self.channels, self.may_reduce)
            return (item if isinstance(item, JpegFile) else raw_pixels(item, source.describe(index))), label
        return read_raw(source, index, keep_jpegs=self.device_decode)

    def may_reduce(self, height: int, width: int) -> bool:  # the whole image is the largest box a crop draws
        return reduction(height, width, self.size) > 1

    def __call__(self, raw: RawImage | JpegFile) -> PlannedCrop:
        top, left, height, width = draw_box(self.crop, self.channels, raw.height, raw.width)  # pretrain_transform's
        flip = bool(torch.rand(1) < self.hflip)  # draws, then RandomHorizontalFlip's
        if isinstance(raw, JpegFile):  # decoded here, at the scale the box allows
            img = open_image(raw.path, self.channels, reduction(height, width, self.size))
            s = decoded_scale(raw, img)
            pixels = raw_pixels(img, str(raw.path))
            t0, l0 = round(top / s), round(left / s)  # the box at the decoded scale, in whole pixels
            t1 = min(pixels.height, max(t0 + 1, round((top + height) / s)))
            l1 = min(pixels.width, max(l0 + 1, round((left + width) / s)))
            top, left, height, width, raw = t0, l0, t1 - t0, l1 - l0, pixels
        if raw.encoded:
            return PlannedCrop(raw, top, left, height, width, flip)
        pixels = np.ascontiguousarray(raw.data[:, top : top + height, left : left + width],  # (C, h, w)
                                      dtype=np.float32 if raw.bands else None)
        return PlannedCrop(replace(raw, data=pixels, height=height, width=width), 0, 0, height, width, flip)


class DeviceAugment:
    """Device side of ``data.device_augment``: decode, crop + resize, flip and normalise a whole batch.

    ``batched_resize`` (default: on a GPU) resizes all crops in a few batched products (``resize_crops``: a few
    launches a group of crops instead of five an image); on a CPU, where those products cost more than they save,
    each crop is resized on its own (``resize_each``). Both give the same pixels to within a grey level in 99% of them
    (tests/test_resize.py, test_device_augment.py)."""

    def __init__(self, img_size: tuple[int, int], channels: int, mean: tuple[float, ...], std: tuple[float, ...],
                 batched_resize: bool | None = None, decoder: str = "auto") -> None:
        self.img_size, self.channels = list(img_size), channels
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)
        self.mode = "GRAY" if channels == 1 else "RGB"
        self.decode_jpeg = jpeg_decoder(decoder)  # data.jpeg_decoder
        self.batched_resize = batched_resize

    def decode(self, batch: PlannedBatch, device: torch.device) -> list[torch.Tensor]:
        """Every image of the batch on ``device`` as (C, H, W) uint8, upright."""
        # the images decoded by the workers reach the device in one copy (pinned by the loader: non-blocking)
        on_device = None if all(batch.encoded) else batch.data.to(device, non_blocking=True)
        images = [batch.image(i, None if enc else on_device) for i, enc in enumerate(batch.encoded)]
        encoded = [i for i, enc in enumerate(batch.encoded) if enc]
        if encoded:
            try:  # one batched call (nvJPEG on CUDA)
                decoded = self.decode_jpeg([images[i] for i in encoded], mode=self.mode, device=device)
            except RuntimeError:
                decoded = [self._decode_one(images[i], batch.names[i], device) for i in encoded]
            for i, img in zip(encoded, decoded, strict=True):
                images[i] = orient(img, batch.orientations[i])
        return images

    def _decode_one(self, data: torch.Tensor, name: str, device: torch.device) -> torch.Tensor:
        try:  # one by one, to name the file that fails
            return self.decode_jpeg(data, mode=self.mode, device=device)
        except RuntimeError as err:
            raise BadImageError(f"{name}: JPEG decoding on {device} failed ({err}); remove the file, or set "
                                f"data.device_augment=false to decode on the CPU, where bad files are skipped") from None

    def __call__(self, batch: PlannedBatch, device: torch.device) -> torch.Tensor:
        """(N, C, H, W) float32 normalised images on ``device``."""
        return self.augment(batch, self.decode(batch, device), device)

    def augment(self, batch: PlannedBatch, images: list[torch.Tensor], device: torch.device) -> torch.Tensor:
        """The decoded ``images`` of ``batch`` cropped, resized, flipped and normalised: (N, C, H, W) float32."""
        crops = []
        for i, img in enumerate(images):
            if img.shape[-2:] != batch.sizes[i]:
                raise BadImageError(f"{batch.names[i]}: decoded to {tuple(img.shape[-2:])}, its header said "
                                    f"{batch.sizes[i]}")
            top, left, height, width = batch.boxes[i]
            crops.append(img[:, top : top + height, left : left + width])  # a view
        batched = self.batched_resize if self.batched_resize is not None else device.type == "cuda"
        x = (resize_crops if batched else resize_each)(crops, tuple(self.img_size), batch.flips)  # (N, C, H, W)
        if crops[0].dtype == torch.uint8:  # pixels 0-255; arrays' bands are normalised in their own units
            x = x.div_(255.0)
        return (x - self.mean.to(device)) / self.std.to(device)
