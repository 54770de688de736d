"""MaskedAutoencoder: equality with Hugging Face ViTMAE and timm, loss semantics, learning on real images."""

import pytest
import torch
import transformers
from transformers import ViTMAEConfig, ViTMAEForPreTraining

import openmae
from openmae.convert.hf import hf_config_dict, hf_to_openmae, installed_layout, openmae_to_hf
from openmae.convert.timm import create_timm_encoder, openmae_to_timm
from openmae.models.pos_embed import sincos_2d

SIZES = [
    # (name, overrides): a 3-channel 32px model and a 1-channel 28px one
    ("mae_vit_debug_patch4_32", {}),
    ("mae_vit_tiny_patch7_28_gray", {"depth": 2, "decoder_depth": 2}),
    ("mae_vit_debug_patch4_32", {"in_chans": 13}),  # a satellite's bands
]


def hf_pair(name, overrides, norm_pix):
    cfg = openmae.model_config(name, norm_pix_loss=norm_pix, **overrides)
    hf = ViTMAEForPreTraining(ViTMAEConfig(**hf_config_dict(cfg))).eval()
    # randomise every tensor so that equality is not an accident of the init (LayerNorms included)
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(torch.randn_like(p) * 0.05 + (1.0 if p.ndim == 1 and p.shape == hf.vit.layernorm.weight.shape else 0))
    ours = openmae.MaskedAutoencoder(cfg).eval()
    ours.load_state_dict(hf_to_openmae(hf.state_dict()), strict=True)
    return cfg, hf, ours


@pytest.mark.parametrize("name,overrides", SIZES)
@pytest.mark.parametrize("norm_pix", [False, True])
def test_equals_hugging_face(name, overrides, norm_pix):
    cfg, hf, ours = hf_pair(name, overrides, norm_pix)
    imgs = torch.randn(3, cfg.in_chans, *cfg.img_size)
    noise = torch.rand(3, cfg.grid[0] * cfg.grid[1])
    with torch.no_grad():
        ref = hf(pixel_values=imgs, noise=noise)
        out = ours(imgs, mask_ratio=0.75, noise=noise)
    assert torch.equal(out.mask, ref.mask)
    torch.testing.assert_close(out.pred, ref.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-5)


def test_hf_roundtrip_both_layouts():
    ours = openmae.create_model("mae_vit_debug_patch4_32")
    sd = ours.state_dict()
    for layout in ("v4", "v5"):
        back = hf_to_openmae(openmae_to_hf(sd, layout=layout))
        assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    assert installed_layout() == ("v5" if int(transformers.__version__.split(".")[0]) >= 5 else "v4")


def test_encoder_features_equal_timm():
    model = openmae.create_model("mae_vit_debug_patch4_32", img_size=(32, 48)).eval()  # non-square
    timm_vit = create_timm_encoder(model.cfg).eval()
    timm_vit.load_state_dict(openmae_to_timm(model.state_dict()), strict=True)
    imgs = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(imgs), timm_vit.forward_features(imgs), rtol=1e-5, atol=1e-5)


def test_features_of_last_blocks_match_timm_intermediates():
    """Several blocks' features: openmae's own path and timm's forward_intermediates give the same tensor, and
    the last D channels are the ordinary final features."""
    from openmae.eval.features import encoder_tokens

    torch.manual_seed(0)
    model = openmae.create_model("mae_vit_debug_patch4_32").eval()
    timm_vit = create_timm_encoder(model.cfg).eval()
    timm_vit.load_state_dict(openmae_to_timm(model.state_dict()), strict=True)
    imgs = torch.randn(2, 3, 32, 32)
    depth, dim = model.cfg.depth, model.cfg.embed_dim
    with torch.no_grad():
        ours = encoder_tokens(model, imgs, depth)
        theirs = encoder_tokens(timm_vit, imgs, depth)
        assert ours.shape == (2, 1 + model.num_patches, dim * depth)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours[..., -dim:], model.forward_features(imgs), rtol=0, atol=0)
        assert not torch.allclose(ours[..., :dim], ours[..., -dim:])  # an earlier block, not a copy
    for bad in (0, depth + 1):
        with pytest.raises(ValueError, match=f"last_blocks={bad}: the encoder has {depth} blocks"):
            encoder_tokens(model, imgs, bad)
        with pytest.raises(ValueError, match=f"last_blocks={bad}: the encoder has {depth} blocks"):
            encoder_tokens(timm_vit, imgs, bad)


def test_sincos_equals_reference_table():
    # Hugging Face's decoder builds its frozen table with the official layout (h/w halves as the original code)
    for width in (64, 32):
        cfg = openmae.model_config("mae_vit_debug_patch4_32", decoder_embed_dim=width)
        hf = ViTMAEForPreTraining(ViTMAEConfig(**hf_config_dict(cfg)))
        hf.decoder.initialize_weights(64)
        torch.testing.assert_close(sincos_2d(width, (8, 8)), hf.decoder.decoder_pos_embed.detach(), rtol=0, atol=1e-6)
    model = openmae.create_model("mae_vit_debug_patch4_32")
    torch.testing.assert_close(model.pos_embed.detach(), sincos_2d(64, (8, 8)), rtol=0, atol=0)
    # non-square grid: first half of the channels encodes the column, second half the row
    table = sincos_2d(16, (2, 3), cls_token=False)[0].view(2, 3, 16)
    assert torch.equal(table[0, :, :8], table[1, :, :8])  # same column -> same first half
    assert torch.equal(table[:, 0, 8:], table[:, 1, 8:])  # same row -> same second half
    model = openmae.create_model("mae_vit_debug_patch4_32")
    assert torch.equal(model.pos_embed[0, 0], torch.zeros(64))  # cls slot zero
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad


def test_loss_ignores_visible_patches():
    model = openmae.create_model("mae_vit_debug_patch4_32")
    imgs = torch.randn(2, 3, 32, 32)
    out = model(imgs, noise=torch.rand(2, 64))
    visible = (out.mask == 0).unsqueeze(-1)
    changed = torch.where(visible, out.pred + 10 * torch.randn_like(out.pred), out.pred)
    torch.testing.assert_close(model.forward_loss(imgs, changed, out.mask), out.loss, rtol=0, atol=0)
    removed = ~visible
    changed_removed = torch.where(removed, out.pred + 1.0, out.pred)
    assert model.forward_loss(imgs, changed_removed, out.mask) != out.loss


def test_norm_pix_target_statistics():
    model = openmae.create_model("mae_vit_debug_patch4_32", norm_pix_loss=True)
    target = model.target(torch.rand(2, 3, 32, 32) * 5 + 3)
    torch.testing.assert_close(target.mean(-1), torch.zeros(2, 64), atol=1e-5, rtol=0)
    torch.testing.assert_close(target.var(-1), torch.ones(2, 64), atol=1e-3, rtol=0)


def test_official_initialisation():
    model = openmae.create_model("mae_vit_tiny_patch4_32")
    assert 0.015 < model.cls_token.std() < 0.025 and 0.015 < model.mask_token.std() < 0.025
    qkv = model.blocks[0].attn.qkv.weight  # xavier uniform: bound sqrt(6 / (fan_in + fan_out))
    bound = (6 / (qkv.shape[0] + qkv.shape[1])) ** 0.5
    assert qkv.abs().max() <= bound and qkv.abs().max() > 0.95 * bound
    assert torch.equal(model.blocks[0].attn.qkv.bias, torch.zeros_like(model.blocks[0].attn.qkv.bias))
    w = model.patch_embed.proj.weight.view(192, -1)
    assert w.abs().max() <= (6 / sum(w.shape)) ** 0.5
    assert model.blocks[0].norm1.eps == 1e-6


def test_paper_parameter_counts():
    def encoder_params(name):
        with torch.device("meta"):  # shapes only: ViT-H's weights take 13 s to initialise on a 2-core CPU
            m = openmae.create_model(name)
        return sum(p.numel() for k, p in m.named_parameters() if not k.startswith(("decoder_", "mask_token")))

    assert abs(encoder_params("mae_vit_base_patch16") / 1e6 - 86) < 1
    assert abs(encoder_params("mae_vit_large_patch16") / 1e6 - 304) < 2
    assert abs(encoder_params("mae_vit_huge_patch14") / 1e6 - 632) < 3
    with torch.device("meta"):
        assert openmae.create_model("B/16").cfg == openmae.model_config("mae_vit_base_patch16")


def test_registry_and_errors():
    names = openmae.list_models()
    assert {"mae_vit_base_patch16", "mae_vit_large_patch16", "mae_vit_huge_patch14"} <= set(names)
    assert openmae.model_config("mae_vit_huge_patch14").decoder_depth == 8
    with pytest.raises(ValueError, match="unknown model 'vit_gigantic'"):
        openmae.create_model("vit_gigantic")
    with pytest.raises(ValueError, match="unknown model option"):
        openmae.create_model("mae_vit_debug_patch4_32", depthh=3)
    with pytest.raises(ValueError, match="patch size 5 does not divide image size 32x32"):
        openmae.create_model("mae_vit_debug_patch4_32", patch_size=5)
    model = openmae.create_model("mae_vit_debug_patch4_32")
    with pytest.raises(ValueError, match="images have 1 channel but the model expects in_chans=3"):
        model(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="images are 28x28 but the model was built for 32x32"):
        model(torch.zeros(1, 3, 28, 28))


def test_multiband_nonsquare_forward_and_backward():
    model = openmae.create_model("mae_vit_debug_patch4_32", img_size=(24, 40), in_chans=5, masking="block")
    out = model(torch.randn(2, 5, 24, 40))
    assert out.pred.shape == (2, 60, 4 * 4 * 5) and out.mask.shape == (2, 60)
    out.loss.backward()
    assert model.patch_embed.proj.weight.grad is not None
    assert model.pos_embed.grad is None  # fixed table


def test_generator_gives_reproducible_forward():
    model = openmae.create_model("mae_vit_debug_patch4_32")
    imgs = torch.randn(2, 3, 32, 32)
    a = model(imgs, generator=torch.Generator().manual_seed(3))
    b = model(imgs, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.mask, b.mask) and torch.equal(a.loss, b.loss)


def test_import_openmae_is_light_and_its_names_load_on_use():
    """`import openmae` (and openmae.config, the host-memory module) imports neither torch nor timm: a tool or a
    subprocess that needs only them does not pay 3-7 s for timm's import of torchvision's model zoo. The package's
    names still load on first use."""
    import subprocess
    import sys

    script = ("import sys, openmae, openmae.config, openmae.engine.host_memory\n"
              "print(sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules))\n"
              "print(openmae.create_model('mae_vit_debug_patch4_32').cfg.depth, 'timm' in sys.modules)\n"
              "print(openmae.load_pretrained.__module__, sorted(set(openmae.__all__) - set(dir(openmae))))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:3] == ["[]", f"{openmae.model_config('mae_vit_debug_patch4_32').depth} True",
                       "openmae.convert.checkpoints []"], out
    with pytest.raises(AttributeError, match="module 'openmae' has no attribute 'create_modle'"):
        openmae.create_modle  # noqa: B018
