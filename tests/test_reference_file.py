"""A reference's patch tokens kept in a file (`visualize --save-reference`, `evaluate.save_reference`): read back, it
searches as the images did; another encoder, input size or normalisation is refused, as are files of other kinds and
settings that apply to images only."""

import csv
import json

import pytest
import torch
from helpers import call_cli

import openmae
from openmae.eval.patch_distance import build_reference
from openmae.eval.reference_file import load_bank, save_bank


def _encoder(tmp_path, seed: int = 0, **overrides) -> str:
    torch.manual_seed(seed)
    model = openmae.create_model("mae_vit_debug_patch4_32", **overrides)
    path = tmp_path / f"encoder{seed}_{len(overrides)}.pth"
    torch.save({"model": model.encoder_state_dict(), "model_config": model.cfg.to_dict()}, path)
    return str(path)


@pytest.fixture
def folders(tmp_path, datasets):
    photos = sorted((datasets / "imagenet-sample").glob("*.JPEG"))
    out = {}
    for name, chosen in (("good", photos[:8]), ("new", photos[6:12])):
        (tmp_path / name).mkdir()
        for photo in chosen:
            (tmp_path / name / photo.name).write_bytes(photo.read_bytes())
        out[name] = str(tmp_path / name)
    return out


def test_a_kept_bank_reads_back_whole_and_refuses_another_encoder_size_or_normalisation(tmp_path):
    torch.manual_seed(0)
    model = openmae.create_model("mae_vit_debug_patch4_32")
    kept = build_reference(model, [torch.randn(5, 3, 32, 32)], keep=0.5)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    path = save_bank(kept, str(tmp_path / "bank.safetensors"), model, (32, 32), 3, mean, std, 1.0, "good", 0.5)
    back, bank = load_bank(str(path), model, (32, 32), 3, mean, std, 1.0).banks, kept.banks[0]
    assert len(back) == 1 and torch.equal(back[0].tokens, bank.tokens) and torch.equal(back[0].image, bank.image)
    assert back[0].scale == bank.scale and back[0].images == bank.images == 5
    torch.manual_seed(1)
    other = openmae.create_model("mae_vit_debug_patch4_32")
    with pytest.raises(ValueError, match=r"made with another encoder \(other weights\)"):
        load_bank(str(path), other, (32, 32), 3, mean, std, 1.0)
    with pytest.raises(ValueError, match=r"read with std \[0.25, 0.25, 0.25\], these with \[0.2, 0.25, 0.25\]"):
        load_bank(str(path), model, (32, 32), 3, mean, (0.2, 0.25, 0.25), 1.0)
    with pytest.raises(ValueError, match=r"read with input size \[32, 32\], these with \[64, 64\]"):
        load_bank(str(path), model, (64, 64), 3, mean, std, 1.0)
    with pytest.raises(ValueError, match=r"read with centre crop \(data.eval_crop_pct\) 1.0, these with 0.875"):
        load_bank(str(path), model, (32, 32), 3, mean, std, 0.875)


def test_a_reference_kept_in_views_reads_back_each_views_bank_and_one_view_stays_version_1(tmp_path):
    """Four views of the patch grid: version 2 of the format, each view's tokens, images and unit read back in
    order; one view: version 1 (what earlier versions read), as before views; a version this openmae does not know:
    refused, saying to update."""
    from safetensors import safe_open

    from openmae.convert.files import save_file

    torch.manual_seed(0)
    model = openmae.create_model("mae_vit_debug_patch4_32")
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    views = build_reference(model, [torch.randn(3, 3, 32, 32), torch.randn(2, 3, 32, 32)], 4, keep=0.5)
    path = save_bank(views, str(tmp_path / "views.safetensors"), model, (32, 32), 3, mean, std, 1.0, "good", 0.5)
    back = load_bank(str(path), model, (32, 32), 3, mean, std, 1.0)
    assert back.views == 4 and back.patch == (4, 4) and len({bank.scale for bank in back.banks}) == 4
    for kept, read in zip(views.banks, back.banks, strict=True):
        assert torch.equal(kept.tokens, read.tokens) and torch.equal(kept.image, read.image)
        assert kept.scale == read.scale and read.images == 5
    one = save_bank(build_reference(model, [torch.randn(3, 3, 32, 32)]), str(tmp_path / "one.safetensors"), model,
                    (32, 32), 3, mean, std, 1.0, "good", 1.0)
    with safe_open(str(one), "pt") as fh:
        how = json.loads(fh.metadata()["openmae_patch_bank"])
        assert how["version"] == 1 and "views" not in how and set(fh.keys()) == {"tokens", "image", "probe"}
    with safe_open(str(path), "pt") as fh:
        meta, tensors = json.loads(fh.metadata()["openmae_patch_bank"]), {k: fh.get_tensor(k) for k in fh.keys()}
    save_file(tensors, tmp_path / "later.safetensors", metadata={"openmae_patch_bank": {**meta, "version": 3}})
    with pytest.raises(ValueError, match=r"written in version 3 of the format, this openmae reads versions 1, 2 \(a "
                                         r"newer openmae wrote it: update openmae\)"):
        load_bank(str(tmp_path / "later.safetensors"), model, (32, 32), 3, mean, std, 1.0)


def test_visualize_keeps_the_reference_and_searches_the_kept_file_as_the_images(tmp_path, folders):
    ckpt = _encoder(tmp_path)
    bank = tmp_path / "good.safetensors"
    first = call_cli("visualize", "--checkpoint", ckpt, folders["new"], "-o", str(tmp_path / "a"), "--distances",
                     folders["good"], "--save-reference", str(bank))
    assert first.returncode == 0, first.stderr
    assert "reading the patch tokens of 8 reference images" in first.stderr and bank.is_file()
    again = call_cli("visualize", "--checkpoint", ckpt, folders["new"], "-o", str(tmp_path / "b"), "--distances",
                     str(bank))
    assert again.returncode == 0, again.stderr
    assert "reading the patch tokens" not in again.stderr  # no image of the reference read again
    assert f"the patch tokens of the reference kept in {bank}: 512 tokens of 8 images" in again.stderr
    a, b = ((tmp_path / d / "distances.csv").read_text() for d in "ab")
    assert a == b and len(a.splitlines()) == 7
    told = call_cli("info", str(bank))  # what the file is, not weights
    assert told.returncode == 0, told.stderr
    assert "a reference's patch tokens" in told.stdout and f"512 tokens of width 64, from 8 images of {folders['good']}" \
        in told.stdout and "read at 32x32 (centre crop 1), 3 channels" in told.stdout
    assert json.loads(call_cli("info", str(bank), "--json").stdout)["images"] == 8
    for flags, message in (
            (["--distances", str(bank), "--coreset", "0.5"], "is a kept reference, searched as it was kept"),
            (["--distances", folders["good"], "--save-reference", str(tmp_path / "x.pt")],
             "--save-reference " + str(tmp_path / "x.pt") + ": give a file name ending in .safetensors"),
            (["--save-reference", str(bank)], "--coreset, --reference-images, --save-reference and --map-views set how"),
            (["--distances", ckpt.replace(".pth", ".safetensors")], "no such reference file")):
        proc = call_cli("visualize", "--checkpoint", ckpt, folders["new"], "-o", str(tmp_path / "x"), *flags)
        assert proc.returncode != 0 and message in proc.stderr, (flags, proc.stderr[-1500:])
    weights = tmp_path / "weights.safetensors"  # a weights file is no kept reference
    assert call_cli("convert", ckpt, str(weights), "--to", "openmae").returncode == 0
    proc = call_cli("visualize", "--checkpoint", ckpt, folders["new"], "-o", str(tmp_path / "x"), "--distances",
                    str(weights))
    assert proc.returncode != 0 and "holds no reference's patch tokens" in proc.stderr, proc.stderr[-1500:]
    proc = call_cli("visualize", "--checkpoint", _encoder(tmp_path, seed=1), folders["new"], "-o",
                    str(tmp_path / "x"), "--distances", str(bank))
    assert proc.returncode != 0 and "made with another encoder (other weights)" in proc.stderr, proc.stderr[-1500:]


def test_evaluate_keeps_the_reference_and_reads_it_back_to_the_same_scores(tmp_path, folders):
    torch.manual_seed(0)
    model = openmae.create_model("mae_vit_debug_patch4_32")
    ckpt = tmp_path / "mae.pth"
    torch.save({"model": model.state_dict(), "model_config": model.cfg.to_dict()}, ckpt)
    bank = tmp_path / "good.safetensors"
    data = ["data.name=folder", f"data.path={folders['new']}", "data.num_workers=0"]
    runs = {"kept": [f"evaluate.reference_images={folders['good']}", "evaluate.reference_coreset=0.5",
                     f"evaluate.save_reference={bank}"],
            "read": [f"evaluate.reference_images={bank}"]}
    scores = {}
    for name, settings in runs.items():
        proc = call_cli("evaluate", "--checkpoint", str(ckpt), *data, *settings, "--predictions",
                        str(tmp_path / f"{name}.csv"))
        assert proc.returncode == 0, proc.stderr[-2000:]
        scores[name] = {r["image"]: r["farthest_patch"] for r in csv.DictReader((tmp_path / f"{name}.csv").open())}
    assert scores["kept"] == scores["read"] and len(scores["read"]) == 6
    assert "a coreset of 0.5" in proc.stderr
    refused = call_cli("evaluate", "--checkpoint", str(ckpt), *data, f"evaluate.reference_images={bank}",
                       f"evaluate.save_reference={tmp_path / 'again.safetensors'}")
    assert refused.returncode != 0 and "is a kept reference, searched as it was kept" in refused.stderr
