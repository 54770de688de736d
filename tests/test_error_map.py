"""Error maps (`openmae visualize --errors`): masks that cover every patch, each patch's prediction averaged over the
passes that removed it, each pixel's squared error, the heat map's scale, the command."""

import matplotlib
import numpy as np
import pytest
import torch
from helpers import call_cli
from PIL import Image

import openmae
from openmae.eval.error_map import COLORMAP, covered_prediction, error_map
from openmae.models.masking import covering_noise, plan_from_noise
from openmae.models.patches import patchify


@pytest.mark.parametrize(("length", "ratio", "passes"), [(64, 0.75, 2), (196, 0.75, 2), (10, 0.3, 4), (49, 0.9, 2)])
def test_covering_masks_remove_every_patch_each_pass_as_many_as_the_ratio_does(length, ratio, passes):
    noise = covering_noise(5, length, ratio, torch.Generator().manual_seed(1))
    assert noise.shape == (passes, 5, length)
    masks = torch.stack([plan_from_noise(n, ratio).mask for n in noise])  # (P, N, L), 1 = removed
    removed = length - int(length * (1 - ratio))
    assert (masks.sum(-1) == removed).all()  # each pass an ordinary mask of this ratio
    assert (masks.sum(0) >= 1).all() and (masks.sum(0) <= 2).all()  # every patch removed, once or twice
    assert not torch.equal(noise[0, 0].argsort(), noise[0, 1].argsort())  # each image its own order
    with pytest.raises(ValueError, match="removes none of 4 patches"):
        covering_noise(1, 4, 0.0)


@pytest.mark.parametrize("norm_pix", [False, True])
def test_each_patch_is_the_mean_of_the_passes_that_removed_it_and_each_pixel_its_squared_error(norm_pix):
    """A stand-in decoder that predicts the image's own patches plus the pass's number: a patch removed in passes 0
    and 1 is predicted at +0.5, one removed in pass 1 alone at +1 (norm_pix: in standardised units, mapped back with
    each patch's standard deviation); the error map is the square of that offset at each of its pixels."""
    torch.manual_seed(0)
    model = openmae.create_model("mae_vit_debug_patch4_32", norm_pix_loss=norm_pix)
    imgs = torch.randn(3, 3, 32, 32)
    passes = iter(range(10))
    model.forward_decoder = lambda latent, ids_restore: model.target(imgs) + next(passes)
    pred, count = covered_prediction(model, imgs, 0.75, seed=4)
    masks = torch.stack([plan_from_noise(n, 0.75).mask
                         for n in covering_noise(3, 64, 0.75, torch.Generator().manual_seed(4))])  # (2, N, L)
    offset = (masks * torch.arange(2.0).view(2, 1, 1)).sum(0) / masks.sum(0)  # (N, L): 0, 0.5 or 1
    target = patchify(imgs, 4)
    scale = (target.var(-1, keepdim=True) + 1e-6) ** 0.5 if norm_pix else 1.0
    assert count == 2 and set(offset.unique().tolist()) <= {0.0, 0.5, 1.0}
    torch.testing.assert_close(pred, target + offset.unsqueeze(-1) * scale)
    passes = iter(range(10))
    shown = error_map(model, imgs, (0.5,) * 3, (0.25,) * 3, 0.75, seed=4, vmax=0.5)
    expected = (offset.unsqueeze(-1) * scale) ** 2  # (N, L, 1 or p*p*C): the same at each pixel of a patch
    expected = torch.nn.functional.fold(expected.expand(-1, -1, 48).transpose(1, 2), (32, 32), 4, stride=4)
    torch.testing.assert_close(shown.errors, expected[:, :3].mean(1) if expected.shape[1] > 1 else expected[:, 0])
    # the heat map's colours: none for no error, the brightest from vmax up
    colours = torch.tensor(matplotlib.colormaps[COLORMAP]([0.0, 1.0])[:, :3], dtype=torch.float32)
    for where, colour in ((shown.errors == 0, colours[0]), (shown.errors >= 0.5, colours[1])):
        assert where.any()
        torch.testing.assert_close(shown.heat.permute(0, 2, 3, 1)[where], colour.expand(int(where.sum()), 3))
    torch.testing.assert_close(shown.original, (imgs * 0.25 + 0.5).clamp(0, 1))
    with pytest.raises(ValueError, match=r"vmax=0: give a squared error > 0"):
        error_map(model, imgs, (0.5,) * 3, (0.25,) * 3, vmax=0)


def test_visualize_errors_writes_three_panels_and_refuses_a_scale_of_zero(tmp_path, datasets):
    model = openmae.create_model("mae_vit_debug_patch4_32", img_size=64, patch_size=8)
    ckpt = tmp_path / "mae.pth"
    torch.save({"model": model.state_dict(), "model_config": model.cfg.to_dict()}, ckpt)
    photo = sorted((datasets / "imagenet-sample").glob("*.JPEG"))[0]
    proc = call_cli("visualize", "--checkpoint", str(ckpt), str(photo), "-o", str(tmp_path / "maps"), "--errors", "2")
    assert proc.returncode == 0, proc.stderr
    png = np.asarray(Image.open(tmp_path / "maps" / f"{photo.stem}.png"))
    assert png.shape == (128, 3 * 128 + 4, 3)  # 64px images enlarged twice, three panels with 2px gaps
    assert "every patch predicted while removed, 2 passes" in proc.stderr
    heat = png[:, 2 * 130:]
    assert (np.abs(heat[..., 0].astype(int) - heat[..., 2]) > 30).any()  # coloured, not grey
    proc = call_cli("visualize", "--checkpoint", str(ckpt), str(photo), "-o", str(tmp_path / "none"), "--errors", "0")
    assert proc.returncode == 2 and "--errors=0.0: --errors takes the squared error at which the heat map is " \
        "brightest, > 0" in " ".join(proc.stderr.split())
    proc = call_cli("visualize", "--checkpoint", str(ckpt), "-o", str(tmp_path / "none"), "--errors", str(photo))
    assert proc.returncode == 2 and f"{str(photo)!r} is no number: --errors takes the squared error" in \
        " ".join(proc.stderr.split()) and "put images and data.* settings before --errors" in proc.stderr
    assert not (tmp_path / "none").exists()
