"""kNN, reconstruction pictures and conversion through the command line."""

import numpy as np
import pytest
import torch
from helpers import run_cli
from PIL import Image

import openmae
from openmae.convert.files import load_file
from openmae.eval.knn import knn_accuracy, knn_predict
from openmae.eval.reconstruction import reconstruct


def test_knn_separable_is_perfect():
    gen = torch.Generator().manual_seed(0)
    centers = torch.eye(4) * 10
    train_labels = torch.arange(4).repeat(50)
    train = centers[train_labels] + torch.randn(200, 4, generator=gen)
    test_labels = torch.arange(4).repeat(10)
    test = centers[test_labels] + torch.randn(40, 4, generator=gen)
    assert knn_accuracy(train, train_labels, test, test_labels, 4, k=5)["knn_top1"] == 100.0


def test_knn_hand_made_example():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    query = torch.tensor([[0.6, 0.8]])  # cos sims: 0.6, 0.6613..., 0.8
    scores = knn_predict(train, labels, query, 2, k=2, temperature=0.1)
    s = torch.nn.functional.normalize(train, dim=1) @ torch.nn.functional.normalize(query, dim=1).T
    expected = torch.tensor([[torch.exp(s[1, 0] / 0.1), torch.exp(s[2, 0] / 0.1)]])  # top-2: items 2 and 1
    torch.testing.assert_close(scores, expected)
    assert knn_predict(train, labels, query, 2, k=3, temperature=1.0).argmax().item() == 0  # two weaker votes win


@pytest.mark.parametrize("norm_pix", [False, True])
def test_visualization_of_real_photo(tmp_path, datasets, norm_pix):
    model = openmae.create_model("mae_vit_debug_patch4_32", img_size=64, patch_size=8, norm_pix_loss=norm_pix)
    ckpt = tmp_path / "mae.pth"
    torch.save({"model": model.state_dict(), "model_config": model.cfg.to_dict()}, ckpt)
    photo = sorted((datasets / "imagenet-sample").glob("*.JPEG"))[0]
    proc = run_cli("visualize", "--checkpoint", str(ckpt), str(photo), "-o", str(tmp_path / "pics"))
    assert proc.returncode == 0, proc.stderr
    png = Image.open(tmp_path / "pics" / f"{photo.stem}.png")
    assert png.size == (4 * 128 + 6, 128)  # 64px images enlarged twice, four panels with 2px gaps
    # the pasted panel equals the input on visible patches, the reconstruction on removed ones
    imgs = torch.randn(2, 3, 64, 64)
    rec = reconstruct(model, imgs, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), seed=3)
    visible = (rec.mask == 0).view(2, 8, 8).repeat_interleave(8, 1).repeat_interleave(8, 2).unsqueeze(1)
    assert torch.equal(rec.pasted * visible, rec.original * visible)
    assert torch.equal(rec.pasted * ~visible, rec.reconstruction * ~visible)
    arr = np.asarray(png)
    assert arr[:, :128].std() > 10  # the original panel is a photo, not a flat colour


def test_convert_cli_roundtrip(tmp_path):
    model = openmae.create_model("mae_vit_debug_patch4_32")
    official = tmp_path / "official.pth"
    torch.save({"model": model.state_dict()}, official)
    for to, dst in (("hf", tmp_path / "hf"), ("timm", tmp_path / "enc.safetensors"), ("openmae", tmp_path / "o.pth")):
        proc = run_cli("convert", str(official), str(dst), "--to", to)
        assert proc.returncode == 0, proc.stderr
    back = tmp_path / "back.pth"
    assert run_cli("convert", str(tmp_path / "hf" / "model.safetensors"), str(back), "--to", "official").returncode == 0
    sd = load_file(back)["model"]
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items()) and sd.keys() == model.state_dict().keys()
    timm_sd = load_file(tmp_path / "enc.safetensors")
    assert set(timm_sd) == set(model.encoder_state_dict())
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    hf = ViTMAEForPreTraining.from_pretrained(str(tmp_path / "hf"))
    hf_sd = {k: v for k, v in hf.state_dict().items()}
    from openmae.convert.hf import hf_to_openmae

    again = hf_to_openmae(hf_sd)
    assert all(torch.equal(again[k], v) for k, v in model.state_dict().items())
    assert isinstance(hf.config, ViTMAEConfig) and hf.config.layer_norm_eps == 1e-6


def test_visualize_dataset_items(tmp_path, datasets):
    model = openmae.create_model("mae_vit_tiny_patch7_28_gray", depth=1, decoder_depth=1)
    ckpt = tmp_path / "mae.pth"
    torch.save({"model": model.state_dict(), "model_config": model.cfg.to_dict()}, ckpt)
    proc = run_cli("visualize", "--checkpoint", str(ckpt), "--count", "3", "-o", str(tmp_path / "pics"),
                   "data.name=fashion-mnist", f"data.root={datasets}")
    assert proc.returncode == 0, proc.stderr
    pngs = sorted((tmp_path / "pics").glob("test-*.png"))
    assert [p.name for p in pngs] == ["test-00000.png", "test-00001.png", "test-00002.png"]
    assert Image.open(pngs[0]).size == (4 * 112 + 6, 112)  # 28px enlarged 4x
