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
