"""The generic inpainter that measures an image's own difficulty: its fill equals the normalised convolution written
out pixel by pixel, its loss and the model's squared error of the same pixels are in the normalised input's units
whatever the model's target, and each image's relative loss is the ratio of the two."""

import math

import numpy as np
import pytest
import torch
from helpers import batches_of_size

import openmae
from openmae.config import ConfigError
from openmae.eval.inpainting import EMPTY, gaussian_kernel, inpaint, inpainting_losses, visible_pixels
from openmae.eval.reconstruction_error import reconstruction_errors
from openmae.eval.typicality import Reference
from openmae.models.patches import patchify


def direct_fill(img: torch.Tensor, visible: torch.Tensor, sigma: float) -> torch.Tensor:
    """(C, H, W) image, (H, W) visible map -> each pixel the Gaussian-weighted mean of the visible pixels within the
    kernel's reach (the image's visible mean where they weigh less than EMPTY), pixel by pixel in float64."""
    radius = max(1, math.ceil(3 * sigma))
    g = torch.tensor([math.exp(-(d * d) / (2 * sigma * sigma)) for d in range(-radius, radius + 1)], dtype=torch.float64)
    g = g / g.sum()
    c, h, w = img.shape
    img, visible = img.double(), visible.double()
    mean = (img * visible).sum((1, 2)) / visible.sum()
    out = torch.empty(c, h, w, dtype=torch.float64)
    for y in range(h):
        for x in range(w):
            top, bottom, left, right = max(0, y - radius), min(h, y + radius + 1), max(0, x - radius), min(w, x + radius + 1)
            weight = torch.outer(g[top - y + radius : bottom - y + radius], g[left - x + radius : right - x + radius])
            weight = weight * visible[top:bottom, left:right]  # the window's visible pixels, as they lie
            den = weight.sum()
            out[:, y, x] = (img[:, top:bottom, left:right] * weight).sum((1, 2)) / den if den >= EMPTY else mean
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
def test_the_inpainters_and_the_models_errors_are_in_pixels_and_the_relative_loss_their_ratio(norm_pix):
    """Per image: the mean over its removed patches of each patch's squared error of the fill (sigma one patch), in
    the normalised input's units whatever the model's target;
    ``reconstruction_errors`` reports it beside the loss, and the relative loss is the loss over it."""
    torch.manual_seed(1)
    model = openmae.create_model("mae_vit_debug_patch4_32", norm_pix_loss=norm_pix).eval()
    imgs = 2.5 * torch.randn(5, 3, 32, 32)  # patches of variance ~6: the two targets' units differ
    positions = np.array([4, 0, 9, 2, 7])
    errors = reconstruction_errors(model, batches_of_size(imgs, 2), positions, 0.75, ((0.4, 0.5, 0.6), (0.2, 0.25, 0.3)))
    noise = model.seeded_noise(torch.from_numpy(positions))
    with torch.no_grad():
        mask = model(imgs, noise=noise).mask  # (N, L), 1 = removed
    torch.testing.assert_close(errors.inpainting_loss, inpainting_losses(model, imgs, mask), rtol=1e-6, atol=0)
    for n in range(5):
        fill = patchify(direct_fill(imgs[n], visible_pixels(mask[n : n + 1], (8, 8), 4)[0, 0], 4.0)[None], 4)[0]
        truth = patchify(imgs[n : n + 1].double(), 4)[0]  # (L, p*p*C)
        want = ((fill - truth) ** 2).mean(-1)[mask[n].bool()].mean()
        assert float(errors.inpainting_loss[n]) == pytest.approx(float(want), rel=1e-4)
    # the model's own squared error of the removed pixels in the same units: its loss for a pixel-target model, its
    # prediction mapped back with each input patch's mean and variance for a norm_pix_loss one
    with torch.no_grad():
        pred = model(imgs, noise=noise).pred
    truth = patchify(imgs, 4)
    if norm_pix:
        pred = pred * (truth.var(-1, keepdim=True) + 1e-6) ** 0.5 + truth.mean(-1, keepdim=True)
        assert not torch.allclose(errors.pixel_loss, errors.loss, rtol=0.1)
    else:
        torch.testing.assert_close(errors.pixel_loss, errors.loss, rtol=1e-5, atol=0)
    want = (((pred - truth) ** 2).mean(-1) * mask).sum(1) / mask.sum(1)
    torch.testing.assert_close(errors.pixel_loss, want, rtol=1e-5, atol=0)
    torch.testing.assert_close(errors.relative_loss, errors.pixel_loss / errors.inpainting_loss)
    summary = errors.summary()
    assert summary["inpainting_loss"] == pytest.approx(float(errors.inpainting_loss.double().mean()))
    assert summary["relative_loss"] == pytest.approx(float(errors.relative_loss.double().mean()))


def test_atypicality_is_the_squared_mahalanobis_distance_of_the_log_errors_and_flags_both_ways():
    """Fitted on reference images' (log loss, log inpainting loss): the squared Mahalanobis distance from their
    mean under their covariance; an image the model fills in much worse, or much better, than reference images of its
    difficulty, and one far harder than any, all lie far off, while a typical one does not (either ratio alone would
    miss one of the first two)."""
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0.0, 0.5, 400)  # log inpainting loss
    error = 0.8 * difficulty - 1.0 + rng.normal(0.0, 0.1, 400)  # log loss: tracks the difficulty
    loss, blur = np.exp(error), np.exp(difficulty)
    ref = Reference.fit(loss, blur)
    x = np.stack([error, difficulty], 1)
    centred = x - x.mean(0)
    want = np.einsum("ni,ij,nj->n", centred, np.linalg.inv(np.cov(x.T)), centred)
    np.testing.assert_allclose(ref.score(loss, blur), want, rtol=1e-9)
    assert ref.score(loss, blur).mean() == pytest.approx(2 * 399 / 400)  # a sample covariance's own mean
    assert ref.tail == pytest.approx(np.percentile(want, 95)) and ref.count == 400
    typical, worse, better, harder = ref.score(np.exp([-1.0, -0.5, -1.5, 2.2]), np.exp([0.0, 0.0, 0.0, 4.0]))
    assert typical < 1 and min(worse, better, harder) > 20


def test_a_reference_is_read_from_evaluates_csv_and_a_bad_one_is_refused(tmp_path):
    rng = np.random.default_rng(1)
    rows = rng.uniform(0.1, 1.0, (30, 2))
    good = tmp_path / "ref.csv"
    good.write_text("image,loss,pixel_loss,inpainting_loss\n" + "".join(f"a{i}.png,{a},0.5,{b}\n" for i, (a, b) in enumerate(rows)))
    ref = Reference.from_csv(good)
    np.testing.assert_allclose(ref.score(rows[:, 0], rows[:, 1]), Reference.fit(rows[:, 0], rows[:, 1]).score(rows[:, 0], rows[:, 1]))
    with pytest.raises(ConfigError, match="no such file"):
        Reference.from_csv(tmp_path / "missing.csv")
    old = tmp_path / "old.csv"
    old.write_text("image,loss,psnr\na.png,0.5,13.2\n")
    with pytest.raises(ConfigError, match="has no column inpainting_loss .columns: image, loss, psnr"):
        Reference.from_csv(old)
    few = tmp_path / "few.csv"
    few.write_text("image,loss,inpainting_loss\n" + "a.png,0.5,0.7\n" * 9)
    with pytest.raises(ConfigError, match="holds 9 images; at least 10"):
        Reference.from_csv(few)
    alike = tmp_path / "alike.csv"
    alike.write_text("image,loss,inpainting_loss\n" + "a.png,0.5,0.7\n" * 20)
    with pytest.raises(ConfigError, match="do not vary"):
        Reference.from_csv(alike)
    broken = rows.copy()
    broken[3, 0] = np.inf
    with pytest.raises(ConfigError, match="1 of the reference's 30 images have errors that are not finite"):
        Reference.fit(broken[:, 0], broken[:, 1])
    back = Reference.from_dict(ref.to_dict())  # as a checkpoint keeps it
    np.testing.assert_array_equal(back.score(rows[:, 0], rows[:, 1]), ref.score(rows[:, 0], rows[:, 1]))
