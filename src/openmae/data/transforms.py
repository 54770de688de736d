"""Augmentations (torchvision transforms v2): the paper's pretraining crop, evaluation resize + crop, and the
fine-tuning recipe built from timm's RandAugment and random erasing."""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from openmae.data.config import DataConfig


def _to_tensor(mean: tuple[float, ...], std: tuple[float, ...]) -> list:
    return [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)]


def pretrain_transform(cfg: DataConfig, img_size: tuple[int, int], mean, std) -> T.Compose:
    """RandomResizedCrop(scale 0.2-1, bicubic) + horizontal flip + normalise (the paper's recipe)."""
    return T.Compose([
        T.RandomResizedCrop(img_size, scale=cfg.crop_scale, interpolation=InterpolationMode.BICUBIC, antialias=True),
        T.RandomHorizontalFlip(cfg.hflip),
        *_to_tensor(mean, std),
    ])


def eval_transform(cfg: DataConfig, img_size: tuple[int, int], mean, std) -> T.Compose:
    """Resize the short side to size / crop_pct, then centre-crop (crop_pct 0.875 from 224px up, else 1)."""
    crop_pct = cfg.eval_crop_pct or (0.875 if min(img_size) >= 224 else 1.0)
    resize = tuple(int(s / crop_pct) for s in img_size)
    return T.Compose([
        T.Resize(resize if img_size[0] != img_size[1] else resize[0], interpolation=InterpolationMode.BICUBIC,
                 antialias=True),
        T.CenterCrop(img_size),
        *_to_tensor(mean, std),
    ])


def _posterize_any_bits(img, bits_to_keep, **__):
    """timm's posterize, also for 0 bits (a black image, as Pillow before 13 gave): the paper's RandAugment
    ``rand-m9-mstd0.5-inc1`` draws magnitude 10 now and then, which asks for 0 bits, and Pillow 13 raises there."""
    from PIL import Image, ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def finetune_transform(cfg: DataConfig, img_size: tuple[int, int], mean, std, auto_augment: str, reprob: float):
    """timm's fine-tuning recipe (RandomResizedCrop, flip, RandAugment, random erasing), its posterize made safe."""
    from timm.data import create_transform
    from timm.data.auto_augment import RandAugment

    transform = create_transform(img_size, is_training=True, scale=cfg.crop_scale, auto_augment=auto_augment or None,
                                 interpolation="bicubic", re_prob=reprob, re_mode="pixel", re_count=1, mean=mean,
                                 std=std, hflip=cfg.hflip)
    for t in transform.transforms:
        if isinstance(t, RandAugment):
            for op in t.ops:
                if op.name.startswith("Posterize"):
                    op.aug_fn = _posterize_any_bits
    return transform
