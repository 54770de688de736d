"""The generic inpainter that measures an image's own difficulty: its fill equals the normalised convolution written
out pixel by pixel, its loss is in the units of the model's own loss (pixels, or per-patch standardised pixels), and
each image's relative loss is its loss over the inpainter's."""

import math

import numpy as np
import pytest
import torch
from helpers import batches_of_size

import openmae
from openmae.eval.inpainting import EMPTY, gaussian_kernel, inpaint, inpainting_losses, visible_pixels
from openmae.eval.reconstruction_error import reconstruction_errors
from openmae.models.patches import patchify


def direct_fill(img: torch.Tensor, visible: torch.Tensor, sigma: float) -> torch.Tensor:
    """(C, H, W) image, (H, W) visible map -> each pixel the Gaussian-weighted mean of the visible pixels within the
    kernel's reach (the image's visible mean where they weigh less than EMPTY), summed pixel by pixel in float64."""
    radius = max(1, math.ceil(3 * sigma))
    g = [math.exp(-(d * d) / (2 * sigma * sigma)) for d in range(-radius, radius + 1)]
    total = sum(g)
    g = [v / total for v in g]
    c, h, w = img.shape
    img, visible = img.double(), visible.double()
    mean = (img * visible).sum((1, 2)) / visible.sum()
    out = torch.empty(c, h, w, dtype=torch.float64)
    for y in range(h):
        for x in range(w):
            num, den = torch.zeros(c, dtype=torch.float64), 0.0
            for i in range(max(0, y - radius), min(h, y + radius + 1)):
                for j in range(max(0, x - radius), min(w, x + radius + 1)):
                    weight = g[i - y + radius] * g[j - x + radius] * float(visible[i, j])
                    num += weight * img[:, i, j]
                    den += weight
            out[:, y, x] = num / den if den >= EMPTY else mean
    return out


@pytest.mark.parametrize("sigma", [2.0, 0.6])
def test_the_fill_is_the_normalised_convolution_written_out(sigma):
    """Visible pixels weighted by a Gaussian cut at 3 sigma, nothing outside the image; with sigma 0.6 (reach 2 px)
    the middle of a 9 x 9 removed block has no visible pixel near and takes the image's visible mean."""
    torch.manual_seed(0)
    imgs = torch.randn(2, 3, 14, 12)
    visible = (torch.rand(2, 1, 14, 12) > 0.6).float()
    visible[1, :, 2:11, 1:10] = 0
    got = inpaint(imgs, visible, sigma)
    for n in range(2):
        torch.testing.assert_close(got[n].double(), direct_fill(imgs[n], visible[n, 0], sigma), rtol=1e-5, atol=1e-5)
    if sigma < 1:
        mean = (imgs[1] * visible[1]).sum((1, 2)) / visible[1].sum()
        torch.testing.assert_close(got[1, :, 6, 5], mean)
    assert gaussian_kernel(sigma).sum().item() == pytest.approx(1.0)


def test_a_flat_image_is_filled_exactly_and_a_patch_mask_becomes_its_pixels():
    mask = torch.tensor([[1.0, 0.0, 0.0, 1.0, 1.0, 0.0]])  # (1, L) on a 2 x 3 grid of 4-px patches, 1 = removed
    seen = visible_pixels(mask, (2, 3), 4)
    assert seen.shape == (1, 1, 8, 12)
    assert seen[0, 0, :4, :4].sum() == 0 and seen[0, 0, :4, 4:8].sum() == 16 and seen[0, 0, 4:, 8:].sum() == 16
    flat = torch.full((1, 3, 8, 12), 0.7)
    torch.testing.assert_close(inpaint(flat, seen, 4.0), flat)


@pytest.mark.parametrize("norm_pix", [False, True])
def test_the_inpainters_loss_is_in_the_models_units_and_the_relative_loss_their_ratio(norm_pix):
    """Per image: the mean over its removed patches of each patch's squared error of the fill (sigma one patch), in
    pixels, or divided by the input patch's variance + 1e-6 for a norm_pix_loss model (the patch's mean cancels);
    ``reconstruction_errors`` reports it beside the loss, and the relative loss is the loss over it."""
    torch.manual_seed(1)
    model = openmae.create_model("mae_vit_debug_patch4_32", norm_pix_loss=norm_pix).eval()
    imgs = torch.randn(5, 3, 32, 32)
    positions = np.array([4, 0, 9, 2, 7])
    errors = reconstruction_errors(model, batches_of_size(imgs, 2), positions, 0.75, ((0.4, 0.5, 0.6), (0.2, 0.25, 0.3)))
    noise = model.seeded_noise(torch.from_numpy(positions))
    with torch.no_grad():
        mask = model(imgs, noise=noise).mask  # (N, L), 1 = removed
    torch.testing.assert_close(errors.inpainting_loss, inpainting_losses(model, imgs, mask), rtol=1e-6, atol=0)
    for n in range(5):
        fill = patchify(direct_fill(imgs[n], visible_pixels(mask[n : n + 1], (8, 8), 4)[0, 0], 4.0)[None], 4)[0]
        truth = patchify(imgs[n : n + 1].double(), 4)[0]  # (L, p*p*C)
        per_patch = ((fill - truth) ** 2).mean(-1)
        if norm_pix:
            per_patch = per_patch / (truth.var(-1) + 1e-6)
        want = per_patch[mask[n].bool()].mean()
        assert float(errors.inpainting_loss[n]) == pytest.approx(float(want), rel=1e-4)
    torch.testing.assert_close(errors.relative_loss, errors.loss / errors.inpainting_loss)
    summary = errors.summary()
    assert summary["inpainting_loss"] == pytest.approx(float(errors.inpainting_loss.double().mean()))
    assert summary["relative_loss"] == pytest.approx(float((errors.loss / errors.inpainting_loss).double().mean()))
