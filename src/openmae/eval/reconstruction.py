"""Reconstruction pictures: original | masked | reconstruction | reconstruction with visible patches pasted."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np
import torch
from PIL import Image

from openmae.models.mae import MaskedAutoencoder
from openmae.models.patches import patchify, unpatchify


class Panels(Protocol):
    """A picture's rows (one an image): its panels (N, C, H, W) in [0, 1] side by side, ``original`` first; those
    whose places ``coloured`` names are red, green, blue already (heat maps, feature colours), the others images of
    the model's bands."""

    original: torch.Tensor
    coloured: ClassVar[tuple[int, ...]]

    def panels(self) -> list[torch.Tensor]: ...


@dataclass
class Reconstruction:
    """Images (N, C, H, W) in [0, 1] (dataset normalisation undone)."""

    original: torch.Tensor
    masked: torch.Tensor
    reconstruction: torch.Tensor
    pasted: torch.Tensor
    mask: torch.Tensor  # (N, L), 1 = removed
    coloured: ClassVar[tuple[int, ...]] = ()  # the panels already red, green, blue (none here)

    def panels(self) -> list[torch.Tensor]:
        return [self.original, self.masked, self.reconstruction, self.pasted]


def predicted_patches(model: MaskedAutoencoder, imgs: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """The decoder's output (N, L, p*p*C) in the input's pixel space: for ``norm_pix_loss`` models each patch is
    mapped back with the mean and variance of the corresponding input patch (as the official visualisation does)."""
    pred = pred.float()
    if model.cfg.norm_pix_loss:
        target = patchify(imgs, model.cfg.patch_size)
        pred = pred * (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(dim=-1, keepdim=True)
    return pred


@torch.no_grad()
def reconstruct(model: MaskedAutoencoder, imgs: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...],
                mask_ratio: float = 0.75, seed: int = 0, stretch: bool = False) -> Reconstruction:
    """Run the MAE on normalised ``imgs`` with a fixed-seed mask and undo every normalisation
    (:func:`predicted_patches`). The panels are in [0, 1]: pixel values as they are, or with ``stretch`` (arrays of
    bands in their own units) each band of each image mapped from its 1st-99th percentile range of the original."""
    model.eval()
    device = next(model.parameters()).device
    imgs = imgs.to(device)
    gen = torch.Generator().manual_seed(seed)
    noise = model.random_noise(imgs.shape[0], torch.device("cpu"), gen, mask_ratio).to(device)
    out = model(imgs, mask_ratio=mask_ratio, noise=noise)
    p, c, size = model.cfg.patch_size, model.cfg.in_chans, model.cfg.img_size
    recon = unpatchify(predicted_patches(model, imgs, out.pred), p, size, c)
    pixel_mask = unpatchify(out.mask.unsqueeze(-1).expand(-1, -1, p * p * c), p, size, c)  # 1 = removed
    to_unit = displayed(imgs, mean, std, stretch)
    original = to_unit(imgs)
    reconstruction = to_unit(recon)
    masked = original * (1 - pixel_mask.cpu()) + 0.5 * pixel_mask.cpu()  # removed patches shown mid-grey
    pasted = original * (1 - pixel_mask.cpu()) + reconstruction * pixel_mask.cpu()
    return Reconstruction(original, masked, reconstruction, pasted, out.mask.cpu())


def displayed(imgs: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], stretch: bool = False
              ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The map of normalised images like ``imgs`` (N, C, H, W) to panels in [0, 1] on the CPU: the normalisation
    undone, and with ``stretch`` each band of each image mapped from its 1st-99th percentile range in ``imgs``."""
    m = torch.tensor(mean, device=imgs.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=imgs.device).view(1, -1, 1, 1)
    lo, span = torch.zeros(()), torch.ones(())
    if stretch:
        flat = (imgs * s + m).float().flatten(2).cpu()  # (N, C, H*W)
        lo, hi = flat.quantile(0.01, dim=2)[..., None, None], flat.quantile(0.99, dim=2)[..., None, None]
        span = (hi - lo).clamp_min(1e-12)
    return lambda x: (((x * s + m).float().cpu() - lo) / span).clamp(0, 1)


def check_bands(bands: tuple[int, ...] | list[int], channels: int) -> None:
    """``bands`` to show: none (the default view), one (grey) or three (red, green, blue) of ``channels``."""
    if len(bands) not in (0, 1, 3) or any(not 0 <= b < channels for b in bands):
        raise ValueError(f"bands to show {list(bands)}: give one band (grey) or three (red, green, blue), each from 0 "
                         f"to {channels - 1} (the model has {channels}); e.g. 3 2 1 for Sentinel-2's true colour")


def grid_image(rec: Panels, scale: int = 1, gap: int = 2, bands: tuple[int, ...] = ()) -> np.ndarray:
    """One row per image, its panels side by side (four of a :class:`Reconstruction`, three of an error map, two of a
    feature or distance map), as an (H, W, 3) uint8 array; ``scale`` enlarges small images. ``bands``: which channels
    to show, one (grey) or three (as red, green, blue); by default the first three, or the first alone when there are
    fewer."""
    panels = rec.panels()
    n, c, h, w = rec.original.shape
    check_bands(bands, c)
    shown = list(bands) if bands else ([0] if c < 3 else [0, 1, 2])
    hh, ww, cols = h * scale, w * scale, len(panels)
    canvas = np.full((n * hh + (n - 1) * gap, cols * ww + (cols - 1) * gap, 3), 255, dtype=np.uint8)
    for row in range(n):
        for col, panel in enumerate(panels):
            x = panel[row]
            if col not in rec.coloured:
                x = x[shown].expand(3, -1, -1) if len(shown) == 1 else x[shown]
            arr = (x.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
            if scale > 1:
                arr = arr.repeat(scale, axis=0).repeat(scale, axis=1)
            top, left = row * (hh + gap), col * (ww + gap)
            canvas[top : top + hh, left : left + ww] = arr
    return canvas


def save_grid(rec: Panels, path: str | Path, scale: int = 1, bands: tuple[int, ...] = ()) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid_image(rec, scale, bands=bands)).save(path)
    return path


def auto_scale(img_size: tuple[int, int], target: int = 128) -> int:
    """Nearest-neighbour enlargement that brings small images to about ``target`` pixels."""
    return max(1, target // max(img_size))
