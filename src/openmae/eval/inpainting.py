"""A generic inpainter, the yardstick of an image's own difficulty: each removed pixel becomes the Gaussian-weighted
mean of the visible pixels around it (normalised convolution: blur(image x visible) / blur(visible)), the Gaussian's
sigma one patch. An MAE's loss on an image ranks the images that are hard to fill in (smooth photos are easy, sharp
edges hard) rather than those unlike its training images; divided by this inpainter's loss on the same removed
patches (``relative_loss``), it says how much better than a blur the model fills the image in, which is what its
training taught it (benchmarks/reconstruction_ood.py: a Fashion-MNIST MAE's loss tells grey CIFAR-10 photos from
its own test photos at a ROC-AUC of 0.47, the relative loss at 0.96)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from openmae.models.mae import MaskedAutoencoder
from openmae.models.patches import patchify

NORM_PIX_EPS = 1.0e-6  # as MaskedAutoencoder.target's per-patch standardisation
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
    """(N,) the inpainter's loss on each image's removed patches (``mask`` (N, L), 1 = removed), in the units of the
    model's own loss: its regression target (per-patch standardised pixels for a ``norm_pix_loss`` model, where the
    inpainter's patch is standardised with the input patch's mean and variance, as :func:`predicted_patches` maps a
    prediction back)."""
    m = model.cfg
    filled = inpaint(imgs, visible_pixels(mask, m.grid, m.patch_size), sigma=float(m.patch_size))
    pred = patchify(filled, m.patch_size)  # (N, L, p*p*C)
    if m.norm_pix_loss:
        truth = patchify(imgs.float(), m.patch_size)
        pred = (pred - truth.mean(-1, keepdim=True)) / (truth.var(-1, keepdim=True) + NORM_PIX_EPS) ** 0.5
    removed = mask.float()
    return (model.patch_losses(imgs, pred) * removed).sum(1) / removed.sum(1)
