"""Patchify / unpatchify for any channel count, non-square images and any dividing patch size.

Layout matches the official MAE code: a patch is flattened as (p, p, C), row-major over the patch grid.
"""

from __future__ import annotations

import torch


def grid_size(img_size: tuple[int, int], patch_size: int) -> tuple[int, int]:
    """Number of patches along (height, width); raises if the patch does not divide the image."""
    h, w = img_size
    if patch_size <= 0 or h % patch_size or w % patch_size:
        raise ValueError(
            f"patch size {patch_size} does not divide image size {h}x{w} (HxW); "
            f"choose a patch size that divides both sides, or resize the images"
        )
    return h // patch_size, w // patch_size


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, L, p*p*C) with L = (H/p)*(W/p)."""
    n, c, h, w = imgs.shape
    gh, gw = grid_size((h, w), patch_size)
    p = patch_size
    x = imgs.reshape(n, c, gh, p, gw, p)
    x = torch.einsum("nchpwq->nhwpqc", x)  # (N, gh, gw, p, p, C)
    return x.reshape(n, gh * gw, p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, img_size: tuple[int, int], channels: int) -> torch.Tensor:
    """(N, L, p*p*C) -> (N, C, H, W); the exact inverse of :func:`patchify`."""
    n, length, dim = patches.shape
    gh, gw = grid_size(img_size, patch_size)
    p = patch_size
    if length != gh * gw or dim != p * p * channels:
        raise ValueError(
            f"patches of shape {tuple(patches.shape)} do not fit image {img_size[0]}x{img_size[1]} "
            f"with patch {p} and {channels} channels (expected L={gh * gw}, dim={p * p * channels})"
        )
    x = patches.reshape(n, gh, gw, p, p, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)  # (N, C, gh, p, gw, p)
    return x.reshape(n, channels, gh * p, gw * p)
