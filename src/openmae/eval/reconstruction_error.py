"""How well an MAE reconstructs images it did not train on, without labels: each image's loss on its removed patches
(the training objective: per-patch normalised pixels for a ``norm_pix_loss`` model) and, for images whose pixel
values lie in [0, 1], the PSNR of its removed patches in those values (comparable between models with and without
``norm_pix_loss``). Each image's mask is drawn from its place in the split (:meth:`MaskedAutoencoder.seeded_noise`),
so that two evaluations of the same images (two epochs, two checkpoints, one process or several) see the same
masks. Held out, the loss shows overfitting on a small set, which the training loss cannot (the training loss is
of augmented crops); per image, it ranks the images the model fills in worst, which are the hardest to fill in
rather than those least like its training images (benchmarks/reconstruction_ood.py: a Fashion-MNIST MAE's loss does
not tell grey CIFAR-10 or ImageNet photos from its own test photos). Each image's squared error divided by a
generic inpainter's on the same removed pixels (:mod:`openmae.eval.inpainting`), its ``relative_loss``, corrects
for that difficulty."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from openmae.data.loader import Batch, batches_of
from openmae.eval.inpainting import RELATIVE_FLOOR, inpainting_losses, removed_mse
from openmae.eval.progress import reported
from openmae.eval.reconstruction import predicted_patches
from openmae.models.mae import MaskedAutoencoder

PSNR_FLOOR = 1e-10  # the least mean squared error a PSNR is taken of (a perfect reconstruction: 100 dB)


@dataclass
class Errors:
    """Per image, in the images' order: ``loss`` (N,) the model's (its training objective), ``pixel_loss`` (N,) the
    mean squared error of its reconstruction of the removed pixels in the normalised input's units (the loss itself
    for a pixel-target model; a ``norm_pix_loss`` model's prediction mapped back with each input patch's mean and
    variance, as its pictures show it), ``inpainting_loss`` (N,) a generic inpainter's in the same units
    (:func:`inpainting_losses`) and ``psnr`` (N,) in dB (None: pixel values not in [0, 1])."""

    loss: torch.Tensor
    pixel_loss: torch.Tensor
    inpainting_loss: torch.Tensor
    psnr: torch.Tensor | None

    @property
    def relative_loss(self) -> torch.Tensor:
        """(N,) each image's pixel loss as a share of the inpainter's: below 1, the model fills it in better than a
        blur; high, worse than its training taught it to on images of the same difficulty."""
        return self.pixel_loss / self.inpainting_loss.clamp_min(RELATIVE_FLOOR)

    def summary(self) -> dict[str, float]:
        """The means over the images (the loss's equals the training loss's definition: every image has as many
        removed patches); ``relative_loss`` is the mean of the images' own ratios."""
        out = {key: float(getattr(self, key).double().mean())
               for key in ("loss", "pixel_loss", "inpainting_loss", "relative_loss")}
        return out if self.psnr is None else {**out, "psnr": float(self.psnr.double().mean())}


@torch.no_grad()
def image_errors(model: MaskedAutoencoder, imgs: torch.Tensor, noise: torch.Tensor, mask_ratio: float,
                 stats: tuple[tuple[float, ...], tuple[float, ...]] | None,
                 amp_dtype: torch.dtype | None = None) -> Errors:
    """The errors of the removed patches of normalised ``imgs`` (N, C, H, W) masked by ``noise`` (N, L): the
    model's loss, its pixel loss, the generic inpainter's and the PSNR. ``stats``: the data's (mean, std), which map
    the images back to pixel values in [0, 1]; None: no PSNR."""
    device = imgs.device
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        out = model(imgs, mask_ratio=mask_ratio, noise=noise.to(device))
    mask = out.mask.float()  # (N, L), 1 = removed
    removed = mask.sum(1)  # (N,) the same for every image
    loss = (model.patch_losses(imgs, out.pred) * mask).sum(1) / removed  # (N,)
    recon = predicted_patches(model, imgs, out.pred)  # (N, L, p*p*C) in the normalised input's units
    patches = model.patchify(imgs)  # (N, L, p*p*C) the input's
    pixel_loss = removed_mse(recon, patches, mask)  # (N,) the loss itself for a pixel-target model
    inpainting = inpainting_losses(model, imgs, mask)  # (N,)
    if stats is None:
        return Errors(loss, pixel_loss, inpainting, None)
    channels = model.cfg.in_chans
    mean = torch.tensor(stats[0], device=device).view(1, 1, 1, channels)
    std = torch.tensor(stats[1], device=device).view(1, 1, 1, channels)
    n, length, _ = out.pred.shape

    def to_unit(patches: torch.Tensor) -> torch.Tensor:  # (N, L, p*p*C) -> (N, L, p*p, C) in pixel values
        return patches.float().view(n, length, -1, channels) * std + mean

    pred = to_unit(recon).clamp(0, 1)  # as a picture of it shows it
    mse = removed_mse(pred.flatten(2), to_unit(patches).flatten(2), mask)  # (N,)
    return Errors(loss, pixel_loss, inpainting, 10 * torch.log10(1 / mse.clamp_min(PSNR_FLOOR)))


def reconstruction_errors(model: MaskedAutoencoder, batches: Iterable[Batch], positions: np.ndarray,
                          mask_ratio: float, stats: tuple[tuple[float, ...], tuple[float, ...]] | None,
                          amp_dtype: torch.dtype | None = None,
                          gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
                          what: str = "reconstruction errors") -> Errors:
    """:func:`image_errors` of every image of ``batches`` (in order), the i-th masked by the noise of seed
    ``positions[i]`` (its place in the whole split). ``gather``: the batches are this rank's part of the images
    (``openmae.engine.distributed.share_of``) and ``gather`` puts every rank's rows together (``gather_rows``): every
    rank returns all the images' errors."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    parts: list[Errors] = []
    done = 0
    try:
        with batches_of(batches) as each, contextlib.closing(reported(each, what, len(positions))) as shown:
            for batch in shown:
                count = batch.images.shape[0]
                seeds = torch.from_numpy(positions[done : done + count])
                noise = model.seeded_noise(seeds, mask_ratio)
                parts.append(image_errors(model, batch.images.to(device, non_blocking=True), noise, mask_ratio,
                                          stats, amp_dtype))
                done += count
    finally:
        model.train(was_training)

    def joined(name: str) -> torch.Tensor:  # (N,) one field of every batch's errors, every rank's with ``gather``
        rows = torch.cat([getattr(e, name) for e in parts]) if parts else torch.zeros(0, device=device)
        return (rows if gather is None else gather(rows)).cpu()

    return Errors(joined("loss"), joined("pixel_loss"), joined("inpainting_loss"),
                  None if stats is None else joined("psnr"))
