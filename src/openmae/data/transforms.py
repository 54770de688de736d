"""Augmentations (torchvision transforms v2): the paper's pretraining crop, evaluation resize + crop, and the
fine-tuning recipe built from timm's RandAugment and random erasing."""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

from openmae.config import require
from openmae.data.config import DataConfig, check_recipe


class ToNormalizedTensor:
    """PIL image -> (C, H, W) float32 in [0, 1], normalised: v2's ``ToImage``, ``ToDtype(scale=True)`` and
    ``Normalize`` through the same functional kernels (equal values), as one step. Written here because the three
    transform objects' per-call dispatch cost more than their arithmetic on small images (135 vs 56 µs at 28px)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean, self.std = list(mean), list(std)

    def __call__(self, img) -> torch.Tensor:
        if isinstance(img, torch.Tensor):  # an array's bands (data.format=array): float already, in the file's units
            return TF.normalize(img, self.mean, self.std)
        x = TF.to_dtype(TF.pil_to_tensor(img), torch.float32, scale=True)  # (C, H, W)
        return TF.normalize(x, self.mean, self.std)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


def _to_tensor(mean: tuple[float, ...], std: tuple[float, ...]) -> list:
    return [ToNormalizedTensor(mean, std)]


def pretrain_transform(cfg: DataConfig, img_size: tuple[int, int], mean, std) -> T.Compose:
    """RandomResizedCrop(scale 0.2-1, bicubic) + horizontal flip + normalise (the paper's recipe)."""
    return T.Compose([
        T.RandomResizedCrop(img_size, scale=cfg.crop_scale, interpolation=InterpolationMode.BICUBIC, antialias=True),
        T.RandomHorizontalFlip(cfg.hflip),
        *_to_tensor(mean, std),
    ])


def draw_box(crop, channels: int, height: int, width: int) -> tuple[int, int, int, int]:
    """The box (top, left, height, width) that ``crop`` (torchvision's ``RandomResizedCrop``, or timm's
    ``RandomResizedCropAndInterpolation``) draws for an image of this size, without the image: its own random draws,
    in its order."""
    shape_only = torch.empty(1, 1, 1, dtype=torch.uint8).expand(channels, height, width)
    if isinstance(crop, T.RandomResizedCrop):
        box = crop.make_params([shape_only])
        return box["top"], box["left"], box["height"], box["width"]
    return tuple(crop.get_params(shape_only, crop.scale, crop.ratio))  # timm's (Python's random)


def eval_crop_pct(configured: float | None, img_size: tuple[int, int]) -> float:
    """The centre crop's share of the resized image in evaluation: ``data.eval_crop_pct``, else 0.875 from 224 px up
    and 1 below."""
    return configured or (0.875 if min(img_size) >= 224 else 1.0)


def eval_resize(crop_pct: float, img_size: tuple[int, int]) -> int | tuple[int, int]:
    """The evaluation's resize, as ``T.Resize`` takes it: the short side to size / crop_pct for a square input, both
    sides for another."""
    resize = tuple(int(s / crop_pct) for s in img_size)
    return resize if img_size[0] != img_size[1] else resize[0]


def eval_geometry(configured_crop: float | None, img_size: tuple[int, int],
                  interpolation: InterpolationMode = InterpolationMode.BICUBIC) -> list:
    """The evaluation's resize (:func:`eval_resize`) and centre crop (:func:`eval_crop_pct`): an image's, or with
    nearest-neighbour interpolation its ground-truth mask's."""
    crop_pct = eval_crop_pct(configured_crop, img_size)
    return [T.Resize(eval_resize(crop_pct, img_size), interpolation=interpolation,
                     antialias=interpolation != InterpolationMode.NEAREST), T.CenterCrop(img_size)]


def eval_transform(cfg: DataConfig, img_size: tuple[int, int], mean, std) -> T.Compose:
    """Resize the short side to size / crop_pct, then centre-crop (:func:`eval_geometry`)."""
    return T.Compose([*eval_geometry(cfg.eval_crop_pct, img_size), *_to_tensor(mean, std)])


def _posterize_any_bits(img, bits_to_keep, **__):
    """timm's posterize, also for 0 bits (a black image, as Pillow before 13 gave): the paper's RandAugment
    ``rand-m9-mstd0.5-inc1`` draws magnitude 10 now and then, which asks for 0 bits, and Pillow 13 raises there."""
    from PIL import Image, ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def check_shift(shift: int, img_size: tuple[int, int]) -> None:
    """A random shift must leave part of the image in view: fewer pixels than its shorter side."""
    require(shift < min(img_size), "finetune.shift", shift,
            f"fewer pixels than the {img_size[0]}x{img_size[1]} images (a few: 2 at 28px)")


def finetune_transform(cfg: DataConfig, img_size: tuple[int, int], mean, std, auto_augment: str, reprob: float,
                       color_jitter: float = 0.0, shift: int = 0, shift_mode: str = "constant"):
    """timm's fine-tuning recipe (RandomResizedCrop, flip, RandAugment, random erasing), its posterize made safe.
    ``color_jitter`` applies only without ``auto_augment`` (timm's rule); 0 turns it off. ``shift`` > 0 moves each
    image by up to that many whole pixels each way after the crop (pad by ``shift`` with ``shift_mode``, black for
    constant, then a random crop of the image size: the classic translation augmentation of small images, which
    keeps a garment's or digit's shape where RandomResizedCrop rescales and stretches it)."""
    from timm.data import create_transform
    from timm.data.auto_augment import RandAugment

    check_shift(shift, img_size)
    if cfg.reads_arrays:
        return _array_finetune_transform(cfg, img_size, mean, std, auto_augment, reprob, color_jitter, shift, shift_mode)
    transform = create_transform(img_size, is_training=True, scale=cfg.crop_scale, auto_augment=auto_augment or None,
                                 interpolation="bicubic", re_prob=reprob, re_mode="pixel", re_count=1, mean=mean,
                                 std=std, hflip=cfg.hflip, color_jitter=color_jitter or None)
    if shift:  # timm's transform list starts with its crop; the shift goes right after it, on the PIL image
        transform.transforms.insert(1, T.RandomCrop(img_size, padding=shift, fill=0, padding_mode=shift_mode))
    for t in transform.transforms:
        if isinstance(t, RandAugment):
            for op in t.ops:
                if op.name.startswith("Posterize"):
                    op.aug_fn = _posterize_any_bits
    return transform


def _array_finetune_transform(cfg: DataConfig, img_size: tuple[int, int], mean, std, auto_augment: str, reprob: float,
                              color_jitter: float, shift: int, shift_mode: str) -> T.Compose:
    """The fine-tuning recipe for arrays of bands (``data.format=array``): timm's order (crop, flip, the shift,
    normalise, random erasing) on tensors; RandAugment and colour jitter refused (:func:`check_recipe`)."""
    from timm.data.random_erasing import RandomErasing

    check_recipe(cfg.format, auto_augment, color_jitter)
    steps = [T.RandomResizedCrop(img_size, scale=cfg.crop_scale, interpolation=InterpolationMode.BICUBIC, antialias=True),
             T.RandomHorizontalFlip(cfg.hflip)]
    if shift:
        steps.append(T.RandomCrop(img_size, padding=shift, fill=0, padding_mode=shift_mode))
    steps.append(ToNormalizedTensor(mean, std))
    if reprob > 0:
        steps.append(RandomErasing(reprob, mode="pixel", max_count=1, device="cpu"))
    return T.Compose(steps)
