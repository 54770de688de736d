"""Where a model fails to reconstruct an image: every patch predicted while removed, and each pixel's squared error.

Passes with complementary masks (:func:`openmae.models.masking.covering_noise`: two at the paper's 0.75) remove every
patch at least once; each patch's prediction is the mean of those of the passes that removed it (in the input's
normalised pixel units, a norm_pix model's mapped back as its pictures are). The squared error of each pixel against
the input, averaged over the channels, is drawn as a heat map on one fixed scale (``vmax``: 1 is an error of one
standard deviation of the data), so that pictures of different images compare: a defect, a lesion or an object unlike
the training images stands out where the model cannot fill it in from its surroundings."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import matplotlib
import torch

from openmae.eval.reconstruction import displayed, predicted_patches
from openmae.models.mae import MaskedAutoencoder
from openmae.models.masking import covering_noise
from openmae.models.patches import patchify, unpatchify

COLORMAP = "inferno"  # perceptually ordered, dark for no error


@dataclass
class ErrorMap:
    """Panels (N, C, H, W) in [0, 1]: the original, its reconstruction (every patch as predicted while removed) and
    the heat map of its squared error (N, 3, H, W, red-green-blue); ``errors`` (N, H, W) in the input's normalised
    units, ``passes`` the forwards it took."""

    original: torch.Tensor
    reconstruction: torch.Tensor
    heat: torch.Tensor
    errors: torch.Tensor
    passes: int
    coloured: ClassVar[tuple[int, ...]] = (2,)

    def panels(self) -> list[torch.Tensor]:
        return [self.original, self.reconstruction, self.heat]


def covered_mean(passes: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Each patch's mean prediction (N, L, D) over the passes that removed it: ``passes`` gives each pass's
    predictions (N, L, D) and mask (N, L), 1 = removed."""
    total = count = None
    for pred, mask in passes:
        removed = mask.unsqueeze(-1).float()  # (N, L, 1)
        total, count = (pred * removed, removed) if total is None else (total + pred * removed, count + removed)
    return total / count


@torch.no_grad()
def covered_prediction(model: MaskedAutoencoder, imgs: torch.Tensor, mask_ratio: float = 0.75, seed: int = 0,
                       seeds: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Every patch of normalised ``imgs`` (N, C, H, W) predicted while removed: (N, L, p*p*C) in the input's units,
    the mean over the passes that removed it; and the number of passes. The masks are drawn from ``seed``, or each
    image's from its own of ``seeds`` (N,) (its place in a split: the same masks whatever the batch)."""
    model.eval()
    imgs = imgs.to(next(model.parameters()).device)
    if seeds is None:
        noises = covering_noise(imgs.shape[0], model.num_patches, mask_ratio, torch.Generator().manual_seed(seed))
    else:  # (P, N, L)
        noises = torch.cat([covering_noise(1, model.num_patches, mask_ratio, torch.Generator().manual_seed(int(s)))
                            for s in seeds], dim=1)

    def passes() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for noise in noises.to(imgs.device):  # (N, L) each
            out = model(imgs, mask_ratio=mask_ratio, noise=noise)
            yield predicted_patches(model, imgs, out.pred), out.mask

    return covered_mean(passes()), len(noises)


def error_map(model: MaskedAutoencoder, imgs: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...],
              mask_ratio: float = 0.75, seed: int = 0, vmax: float = 1.0, stretch: bool = False) -> ErrorMap:
    """The :class:`ErrorMap` of normalised ``imgs``; the heat map runs from no error (black) to ``vmax`` and above
    (white-yellow). ``stretch``: panels of bands in their own units, as :func:`openmae.eval.reconstruction.reconstruct`."""
    if not vmax > 0:
        raise ValueError(f"the error map's scale vmax={vmax}: give a squared error > 0 (1: one standard deviation)")
    pred, passes = covered_prediction(model, imgs, mask_ratio, seed)
    p, c, size = model.cfg.patch_size, model.cfg.in_chans, model.cfg.img_size
    imgs = imgs.to(pred.device)
    errors = squared_errors(model, imgs, pred)
    to_unit = displayed(imgs, mean, std, stretch)
    return ErrorMap(to_unit(imgs), to_unit(unpatchify(pred, p, size, c)), heat_colours(errors, vmax), errors.cpu(),
                    passes)


def squared_errors(model: MaskedAutoencoder, imgs: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Each pixel's squared error (N, H, W), averaged over the channels, of the patches ``pred`` (N, L, p*p*C)
    against normalised ``imgs`` (N, C, H, W)."""
    p, c, size = model.cfg.patch_size, model.cfg.in_chans, model.cfg.img_size
    return unpatchify((pred - patchify(imgs, p).float()) ** 2, p, size, c).mean(dim=1)


def error_maps(model: MaskedAutoencoder, imgs: torch.Tensor, seeds: torch.Tensor, mask_ratio: float = 0.75
               ) -> torch.Tensor:
    """The squared errors (N, H, W) of :func:`error_map` alone, each image's masks drawn from its seed of ``seeds``
    (N,): what ``evaluate.defect_masks`` scores against the defects and ``evaluate.save_maps`` keeps."""
    pred = covered_prediction(model, imgs, mask_ratio, seeds=seeds)[0]
    return squared_errors(model, imgs.to(pred.device), pred)


def heat_colours(values: torch.Tensor, vmax: float) -> torch.Tensor:
    """Values (N, H, W) >= 0 -> their heat-map colours (N, 3, H, W) in [0, 1], black at 0, white-yellow at ``vmax``
    and above."""
    colours = matplotlib.colormaps[COLORMAP]((values / vmax).clamp(0, 1).cpu().numpy())  # (N, H, W, 4)
    return torch.from_numpy(colours[..., :3]).permute(0, 3, 1, 2).float()
