"""A generic inpainter, the yardstick of an image's own difficulty: each removed pixel becomes the Gaussian-weighted
mean of the visible pixels around it (normalised convolution: blur(image x visible) / blur(visible)), the Gaussian's
sigma one patch. An MAE's loss on an image ranks the images that are hard to fill in (smooth photos are easy, sharp
edges hard) rather than those unlike its training images; the model's squared error over this inpainter's on the
same removed pixels (``relative_loss``) says how much better than a blur the model fills the image in, which is
what its training taught it (benchmarks/reconstruction_ood.py)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from openmae.models.mae import MaskedAutoencoder
from openmae.models.patches import patchify

EMPTY = 1.0e-3  # a pixel whose visible neighbourhood weighs less than this takes the image's visible mean
RELATIVE_FLOOR = 1.0e-8  # the least inpainter loss a relative loss is taken of (a blank image fills in exactly)


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """(2r + 1,) a normalised 1-D Gaussian, cut at r = ceil(3 sigma)."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, C, H, W) -> the same shape, each channel blurred by a separable Gaussian with zeros outside the image.

    Written here rather than torchvision's ``gaussian_blur``: that one pads by reflection, which counts the pixels
    near a border twice (and needs a kernel shorter than twice the image); normalised convolution needs the pixels
    outside the image to weigh nothing, in the image and in its visibility map alike."""
    kernel = gaussian_kernel(sigma).to(x)
    channels, radius = x.shape[1], kernel.numel() // 2
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), padding=(0, radius), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), padding=(radius, 0), groups=channels)


def inpaint(imgs: torch.Tensor, visible: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, C, H, W) images with (N, 1, H, W) ``visible`` pixels (1 = seen) -> the images with every pixel replaced by
    the Gaussian-weighted mean of the visible ones (sigma in pixels); where none lies near, the image's visible
    mean."""
    imgs, visible = imgs.float(), visible.float()
    weight = blur(visible, sigma)  # (N, 1, H, W)
    filled = blur(imgs * visible, sigma) / weight.clamp_min(EMPTY)
    mean = (imgs * visible).sum((2, 3), keepdim=True) / visible.sum((2, 3), keepdim=True).clamp_min(1)  # (N, C, 1, 1)
    return torch.where(weight >= EMPTY, filled, mean)


def visible_pixels(mask: torch.Tensor, grid: tuple[int, int], patch: int) -> torch.Tensor:
    """(N, L) patch mask (1 = removed) -> (N, 1, H, W) visible pixels (1 = seen)."""
    n = mask.shape[0]
    seen = (1 - mask.float()).view(n, 1, *grid)
    return seen.repeat_interleave(patch, 2).repeat_interleave(patch, 3)


def inpainting_losses(model: MaskedAutoencoder, imgs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N,) the inpainter's mean squared error of each image's removed pixels (``mask`` (N, L) of patches, 1 =
    removed), in the units of the normalised input ``imgs`` (N, C, H, W): a pixel-target model's loss's units,
    whatever the model's target (a ``norm_pix_loss`` model's per-patch standardised pixels would magnify a blur's
    small errors on near-flat patches into thousands)."""
    m = model.cfg
    filled = inpaint(imgs, visible_pixels(mask, m.grid, m.patch_size), sigma=float(m.patch_size))
    return removed_mse(patchify(filled, m.patch_size), patchify(imgs.float(), m.patch_size), mask)


def removed_mse(pred: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N,) the mean squared error of (N, L, D) patches over the removed ones (``mask`` (N, L), 1 = removed)."""
    removed = mask.float()
    return (((pred.float() - truth.float()) ** 2).mean(-1) * removed).sum(1) / removed.sum(1)
