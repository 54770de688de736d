"""Feature maps (`openmae visualize --features`): the principal components of patch tokens about their place's mean,
each patch coloured by its own token, encoders without a final norm, the command."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import call_cli
from PIL import Image

import openmae
from openmae.eval.feature_map import feature_map, fit_components, patch_tokens
from openmae.eval.plots import principal_axes
from openmae.models.vit import create_classifier


def test_the_components_are_what_differs_between_images_beyond_their_place():
    """Tokens = a large table of each place (shared by every image) + a * e0 + b * e1 / 2 + noise: the first two
    components are e0 and e1 (signed so that their largest loading is positive), not the table; red follows a,
    green b, from the 1st to the 99th percentile; one image alone is centred on its mean token."""
    gen = torch.Generator().manual_seed(0)
    n, h, w, d = 40, 3, 4, 16
    table = 10 * torch.randn(h, w, d, generator=gen)
    a, b = torch.randn(n, h, w, generator=gen), torch.randn(n, h, w, generator=gen)
    eye = torch.eye(d)
    tokens = table + a[..., None] * eye[0] + b[..., None] * eye[1] / 2 + 0.01 * torch.randn(n, h, w, d, generator=gen)
    comps = fit_components(tokens)
    assert comps.mean.shape == (h, w, d) and torch.allclose(comps.mean, tokens.mean(0))
    assert torch.allclose(comps.axes[0], eye[0], atol=0.05) and torch.allclose(comps.axes[1], eye[1], atol=0.05)
    assert comps.explained[0] > comps.explained[1] > 10 * comps.explained[2]
    colours = comps.colours(tokens)  # (N, 3, h, w)
    assert colours.shape == (n, 3, h, w) and colours.min() >= 0 and colours.max() <= 1
    for channel, part in ((0, a), (1, b)):
        centred, colour = (part - part.mean(0)).flatten(), colours[:, channel].flatten()
        assert np.corrcoef(colour, centred)[0, 1] > 0.98
        assert (colour[centred.argmin()], colour[centred.argmax()]) == (0, 1)  # clamped past the percentiles
    one = fit_components(tokens[:1])
    assert one.mean.shape == (d,) and torch.allclose(one.mean, tokens[0].reshape(-1, d).mean(0))
    mean, directions, share = principal_axes(np.array([[0.0, 0.0], [2.0, 0.0]]))  # one row less than needed: padded
    assert np.allclose(mean, [1, 0]) and np.allclose(directions[0], [1, 0]) and share[0] == pytest.approx(1)
    assert fit_components(torch.tensor([[[[0.0, 1.0]]], [[[2.0, 1.0]]]])).axes.shape == (3, 2)


def test_each_patch_is_coloured_by_its_own_token_at_its_place():
    """The panel's pixels of patch (r, c) are the colour of the encoder's token r * w + c (the whole image seen, after
    the final norm): no place swapped, each patch one colour; the original passes through."""
    torch.manual_seed(0)
    model = openmae.create_model("mae_vit_debug_patch4_32", img_size=(32, 48))  # a grid of 8 x 12
    imgs = torch.randn(3, 3, 32, 48)
    tokens = patch_tokens(model, imgs)
    with torch.no_grad():
        assert torch.equal(tokens, model.eval().forward_features(imgs)[:, 1:].reshape(3, 8, 12, -1))
    comps = fit_components(tokens)
    original = torch.rand(3, 3, 32, 48)
    shown = feature_map(model, imgs, comps, original)
    assert shown.original is original and shown.features.shape == (3, 3, 32, 48)
    colours = comps.colours(tokens)
    for r, c in ((0, 0), (2, 7), (7, 11)):
        block = shown.features[:, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4]
        assert torch.equal(block, colours[:, :, r, c, None, None].expand_as(block))
    assert len({tuple(colours[0, :, r, c].tolist()) for r in range(8) for c in range(12)}) > 50


def test_a_classifier_without_a_final_norm_has_its_tokens_standardised():
    """A classifier fine-tuned with average pooling has no final norm (its fc_norm reads the mean token): its last
    block's patch tokens are standardised each, without a scale or shift."""
    cfg = openmae.model_config("mae_vit_debug_patch4_32")
    torch.manual_seed(0)
    classifier = create_classifier(cfg, 10, "avg")
    imgs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        raw = classifier.eval().forward_features(imgs)[:, 1:]
    want = F.layer_norm(raw, raw.shape[-1:]).reshape(2, 8, 8, -1)
    torch.testing.assert_close(patch_tokens(classifier, imgs), want)


@pytest.mark.parametrize("kind", ["encoder", "classifier"])
def test_the_command_draws_feature_maps_of_any_encoder_and_refuses_two_kinds_at_once(tmp_path, datasets, kind):
    """`visualize --features` of an encoder without a decoder (refused for reconstructions) or a fine-tuned
    classifier: two panels a photo, the components' variance logged, the same colours for the same photo; with
    --errors refused."""
    torch.manual_seed(0)
    model = openmae.create_model("mae_vit_debug_patch4_32", img_size=64, patch_size=8)
    weights = (model.encoder_state_dict() if kind == "encoder" else
               create_classifier(model.cfg, 10, "avg").state_dict())
    ckpt = tmp_path / "weights.pth"
    torch.save({"model": weights, "model_config": model.cfg.to_dict()}, ckpt)
    photos = sorted((datasets / "imagenet-sample").glob("*.JPEG"))[:3]
    copy = tmp_path / "again" / photos[0].name
    copy.parent.mkdir()
    copy.write_bytes(photos[0].read_bytes())
    proc = call_cli("visualize", "--checkpoint", str(ckpt), *map(str, photos), str(copy), "-o", str(tmp_path / "maps"),
                    "--features")
    assert proc.returncode == 0, proc.stderr
    assert "principal components (red, green, blue: " in proc.stderr
    assert "fitted on the 4 images' patches, each about its place's mean" in proc.stderr
    pngs = sorted((tmp_path / "maps").glob("*.png"))
    assert len(pngs) == 4
    drawn = [np.asarray(Image.open(p)) for p in pngs]
    assert all(png.shape == (128, 2 * 128 + 2, 3) for png in drawn)  # 64px images enlarged twice, two panels
    features = [png[:, 130:] for png in drawn]
    assert (np.abs(features[0][..., 0].astype(int) - features[0][..., 2]) > 30).any()  # coloured, not grey
    twins = [f for p, f in zip(pngs, features, strict=True) if photos[0].stem in p.stem]
    assert len(twins) == 2 and np.array_equal(twins[0], twins[1])
    proc = call_cli("visualize", "--checkpoint", str(ckpt), str(photos[0]), "--features", "--errors")
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr
