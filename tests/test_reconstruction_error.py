"""Reconstruction error without labels: each image's loss and PSNR equal their definitions, whatever the batches;
a pretraining run's held-out loss (``pretrain.eval_every_epochs``) is what ``openmae evaluate`` measures of its
checkpoint on the same images; settings that cannot apply are refused."""

import csv
import json
import shutil
from dataclasses import fields

import numpy as np
import pytest
import torch
from helpers import batches_of_size, call_cli, tiny_pretrain, weights
from PIL import Image

import openmae
from openmae.config import ConfigError, load_config
from openmae.convert.checkpoints import load_pretrained
from openmae.convert.files import load_file
from openmae.data.build import eval_batches, holdout_indices
from openmae.engine.logging import read_metrics
from openmae.engine.pretrain import pretrain
from openmae.engine.task_config import EvaluateConfig, PretrainConfig
from openmae.eval.reconstruction import Reconstruction, grid_image, reconstruct
from openmae.eval.reconstruction_error import reconstruction_errors
from openmae.eval.typicality import Reference

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def photo_folder(folder, datasets, count: int = 40):
    """An unlabelled folder of the first ``count`` CIFAR-10 test photos, named by class and file."""
    folder.mkdir()
    for path in sorted((datasets / "cifar10" / "test").rglob("*.jpg"))[:count]:
        shutil.copy(path, folder / f"{path.parent.name}-{path.name}")
    return folder


@pytest.mark.parametrize("norm_pix", [False, True])
def test_each_images_loss_and_psnr_are_their_definitions_whatever_the_batches(norm_pix):
    """Image i's loss is the model's own loss of it alone, masked by the noise of seed positions[i] (what
    ``reconstruct`` draws with seed positions[i] + 1); its PSNR is that of the removed pixels of the picture
    ``reconstruct`` makes (dataset normalisation undone, clamped to [0, 1]); batches of 2 or 7 give the same; the
    mean loss over a batch is the training loss of that batch with those masks."""
    torch.manual_seed(0)
    model = openmae.create_model("mae_vit_debug_patch4_32", norm_pix_loss=norm_pix).eval()
    pixels = torch.rand(7, 3, 32, 32)
    imgs = (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    positions = np.array([5, 3, 11, 0, 8, 2, 40])
    errors = reconstruction_errors(model, batches_of_size(imgs, 2), positions, 0.75, (MEAN, STD))
    again = reconstruction_errors(model, batches_of_size(imgs, 7), positions, 0.75, (MEAN, STD))
    torch.testing.assert_close(errors.loss, again.loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(errors.psnr, again.psnr, rtol=1e-5, atol=0)
    for i, place in enumerate(positions):
        noise = model.random_noise(1, torch.device("cpu"), torch.Generator().manual_seed(int(place) + 1))
        with torch.no_grad():
            own = model(imgs[i : i + 1], noise=noise).loss
        assert float(errors.loss[i]) == pytest.approx(float(own), rel=1e-5)
        rec = reconstruct(model, imgs[i : i + 1], MEAN, STD, 0.75, seed=int(place) + 1)
        removed = rec.mask.view(1, 8, 8).repeat_interleave(4, 1).repeat_interleave(4, 2)  # (1, H, W) a patch 4 px
        removed = removed[:, None].expand(1, 3, 32, 32).bool()  # (1, C, H, W) the removed pixels
        mse = ((rec.reconstruction - rec.original)[removed] ** 2).mean()
        assert float(errors.psnr[i]) == pytest.approx(float(10 * torch.log10(1 / mse)), rel=1e-4)
    noise = model.seeded_noise(torch.from_numpy(positions))
    with torch.no_grad():
        batch_loss = model(imgs, noise=noise).loss
    assert errors.summary()["loss"] == pytest.approx(float(batch_loss), rel=1e-5)
    assert errors.summary()["psnr"] == pytest.approx(float(errors.psnr.double().mean()))
    # no pixel statistics (arrays in their own units): no PSNR
    assert reconstruction_errors(model, batches_of_size(imgs, 4), positions, 0.75, None).psnr is None


def test_a_runs_held_out_loss_is_what_evaluate_measures_of_its_checkpoint(tmp_path, datasets):
    """An unlabelled folder of 40 photos with a held-out fifth: the run trains on the other 32 only, logs eval_loss /
    eval_psnr of the 8 every epoch, and
    `openmae evaluate` of model-last.pth on the same held-out images gives the last epoch's numbers, each image's in
    its CSV (their mean), naming the worst and drawing them (--plot); the official layout converted from it measures the same when told its
    head counts, which its shapes cannot tell, and so does a Hugging Face folder of it."""
    photos = photo_folder(tmp_path / "photos", datasets)
    data = ["data.name=folder", f"data.path={photos}", "data.holdout=0.2", "data.max_samples=0"]
    run = tmp_path / "run"
    out = pretrain(tiny_pretrain(run, datasets, *data, "train.batch_size=8", "train.epochs=2",
                                 "pretrain.eval_every_epochs=1"))
    logged = [r for r in read_metrics(run / "metrics.jsonl") if "eval_loss" in r]
    assert [r["epoch"] for r in logged] == [1, 2] and logged[0]["eval_loss"] != logged[1]["eval_loss"]
    assert out["eval_loss"] == logged[-1]["eval_loss"] and 0 < out["eval_psnr"] < 60
    assert max(r["step"] for r in read_metrics(run / "metrics.jsonl")) == 2 * 32 // 8  # the 8 held out not trained on

    predictions, result = tmp_path / "errors.csv", tmp_path / "errors.json"
    plot = tmp_path / "worst.png"
    proc = call_cli("evaluate", "--checkpoint", str(run / "model-last.pth"), "--predictions", str(predictions),
                    "-o", str(result), "--plot", str(plot), *data, "data.num_workers=0", "evaluate.batch_size=3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    told = json.loads(result.read_text())
    assert told["samples"] == 8 and told["mask_ratio"] == 0.75
    assert told["loss"] == pytest.approx(logged[-1]["eval_loss"], rel=1e-5)
    assert told["psnr"] == pytest.approx(logged[-1]["eval_psnr"], rel=1e-5)
    # the inpainter's loss: no model in it, the same at every epoch (same masks), and evaluate's
    assert logged[0]["eval_inpainting_loss"] == logged[1]["eval_inpainting_loss"]
    assert told["inpainting_loss"] == pytest.approx(logged[-1]["eval_inpainting_loss"], rel=1e-5)
    assert told["relative_loss"] == pytest.approx(logged[-1]["eval_relative_loss"], rel=1e-5)
    rows = list(csv.DictReader(predictions.open()))
    held = holdout_indices(40, 0.2, 0)[1]
    names = sorted(p.name for p in photos.iterdir())
    assert [r["image"].rsplit("/", 1)[-1] for r in rows] == [names[i] for i in held]
    assert np.mean([float(r["loss"]) for r in rows]) == pytest.approx(told["loss"], rel=1e-5)
    worst = max(rows, key=lambda r: float(r["loss"]))["image"]
    assert f"highest loss: {worst} (" in proc.stderr
    # beside each image's loss its squared error of the removed pixels (a pixel-target model's: the loss), a generic
    # inpainter's and their ratio, named by the highest ratio too
    assert not told["norm_pix_loss"] and told["pixel_loss"] == pytest.approx(told["loss"], rel=1e-5)
    for r in rows:
        assert float(r["relative_loss"]) == pytest.approx(float(r["pixel_loss"]) / float(r["inpainting_loss"]), rel=1e-4)
    for key in ("pixel_loss", "inpainting_loss", "relative_loss"):
        assert np.mean([float(r[key]) for r in rows]) == pytest.approx(told[key], rel=1e-5)
    odd = max(rows, key=lambda r: float(r["relative_loss"]))["image"]
    assert f"highest relative loss (the squared error over a generic inpainter's): {odd} (" in proc.stderr
    assert "atypicality" not in rows[0] and "atypicality" not in told
    # atypicality: 8 images are too few for a reference, refused saying so; all 40 photos as the reference, the 8
    # held-out ones scored by the Gaussian fitted on the 40 (log loss, log inpainter's error)
    few = call_cli("evaluate", "--checkpoint", str(run / "model-last.pth"), *data, f"evaluate.reference={predictions}")
    assert few.returncode != 0 and "the reference holds 8 images; at least 10 are needed" in few.stderr
    # nor did the run keep its 8 held-out images' as one: ranking by atypicality without a reference is refused
    assert "reconstruction_reference" not in load_file(run / "model-last.pth")
    unranked = call_cli("evaluate", "--checkpoint", str(run / "model-last.pth"), *data, "evaluate.rank_by=atypicality")
    assert unranked.returncode != 0 and "evaluate.rank_by=atypicality needs reference images" in unranked.stderr
    reference = tmp_path / "reference.csv"
    assert call_cli("evaluate", "--checkpoint", str(run / "model-last.pth"), *data, "data.holdout=0",
                    "data.num_workers=0", "--predictions", str(reference)).returncode == 0
    scored = call_cli("evaluate", "--checkpoint", str(run / "model-last.pth"), *data, "data.num_workers=0",
                      f"evaluate.reference={reference}", "--predictions", str(tmp_path / "scored.csv"))
    assert scored.returncode == 0, scored.stderr[-2000:]
    ref_rows = list(csv.DictReader(reference.open()))
    fitted = Reference.fit(*(np.array([float(r[k]) for r in ref_rows]) for k in ("loss", "inpainting_loss")))
    want = fitted.score(*(np.array([float(r[k]) for r in rows]) for k in ("loss", "inpainting_loss")))
    got = [float(r["atypicality"]) for r in csv.DictReader((tmp_path / "scored.csv").open())]
    np.testing.assert_allclose(got, want, rtol=1e-4)
    result = json.loads(scored.stdout.splitlines()[-1])
    assert len(ref_rows) == 40 and result["atypicality"] == pytest.approx(want.mean(), rel=1e-4)
    assert result["atypical_share"] == np.mean(want > fitted.tail)
    assert f"against {reference} (40 images): mean atypicality {want.mean():.2f}" in scored.stderr
    # --plot: the 8 images by falling loss, each masked as measured (seed: its place among the held-out images)
    cfg = load_config(EvaluateConfig, overrides=[f"evaluate.init={run / 'model-last.pth'}", *data])
    model = load_pretrained(load_file(run / "model-last.pth"))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # the run's (ImageNet's, as a folder's default)
    imgs = next(iter(eval_batches(cfg.data, cfg.data.eval_split, (32, 32), 3, 8))).images
    order = sorted(range(8), key=lambda i: -float(rows[i]["loss"]))
    drawn = [reconstruct(model, imgs[i : i + 1], mean, std, 0.75, seed=i + 1) for i in order]
    want = grid_image(Reconstruction(*(torch.cat([getattr(r, f.name) for r in drawn]) for f in fields(Reconstruction))),
                      scale=4)
    assert np.array_equal(np.asarray(Image.open(plot)), want)
    # evaluate.rank_by=relative_loss: --plot draws them by falling relative loss instead
    by_ratio = call_cli("evaluate", "--checkpoint", str(run / "model-last.pth"), "--plot", str(tmp_path / "odd.png"),
                        *data, "data.num_workers=0", "evaluate.rank_by=relative_loss")
    assert by_ratio.returncode == 0, by_ratio.stderr[-2000:]
    by_loss, order = order, sorted(range(8), key=lambda i: -float(rows[i]["relative_loss"]))
    assert order != by_loss  # (these 8 photos rank differently by the two)
    drawn = [reconstruct(model, imgs[i : i + 1], mean, std, 0.75, seed=i + 1) for i in order]
    want = grid_image(Reconstruction(*(torch.cat([getattr(r, f.name) for r in drawn]) for f in fields(Reconstruction))),
                      scale=4)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "odd.png")), want)

    official = tmp_path / "official.pth"
    assert call_cli("convert", str(run / "model-last.pth"), str(official), "--to", "official").returncode == 0
    # a file without its architecture: the debug preset's two heads named (its shapes read as one)
    again = call_cli("evaluate", "--checkpoint", str(official), *data, "data.num_workers=0", "evaluate.mask_ratio=0.75",
                     "model.num_heads=2", "model.decoder_num_heads=2")
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout.splitlines()[-1])["loss"] == pytest.approx(told["loss"], rel=1e-5)
    # a Hugging Face folder (its config.json holds the architecture and norm_pix_loss) measures the same
    assert call_cli("convert", str(run / "model-last.pth"), str(tmp_path / "hf"), "--to", "hf").returncode == 0
    hf = call_cli("evaluate", "--checkpoint", str(tmp_path / "hf"), *data, "data.num_workers=0")
    assert hf.returncode == 0, hf.stderr[-2000:]
    assert json.loads(hf.stdout.splitlines()[-1])["loss"] == pytest.approx(told["loss"], rel=1e-5)


def test_settings_a_reconstruction_cannot_use_are_refused(tmp_path, datasets):
    with pytest.raises(ConfigError, match=r"pretrain.eval_every_epochs=1 is invalid: .*data.holdout=0.05"):
        load_config(PretrainConfig, overrides=["data.name=folder", f"data.path={tmp_path}",
                                               "pretrain.eval_every_epochs=1"])
    with pytest.raises(ConfigError, match="evaluate.mask_ratio=1.0 is invalid"):
        load_config(EvaluateConfig, overrides=["evaluate.init=x.pth", "data.name=cifar10", "evaluate.mask_ratio=1.0"])
    with pytest.raises(ConfigError, match="evaluate.rank_by='psnr' is invalid: must be loss, relative_loss, "
                                          "atypicality or farthest_patch"):
        load_config(EvaluateConfig, overrides=["evaluate.init=x.pth", "data.name=cifar10", "evaluate.rank_by=psnr"])
    torch.manual_seed(0)
    mae = openmae.create_model("mae_vit_debug_patch4_32")
    torch.save({"model": mae.state_dict(), "model_config": mae.cfg.to_dict()}, tmp_path / "mae.pth")
    proc = call_cli("evaluate", "--checkpoint", str(tmp_path / "mae.pth"), f"--data-root={datasets}",
                    "data.name=cifar10", "--calibration-plot", str(tmp_path / "p.png"))
    assert proc.returncode != 0 and "evaluate.calibration_plot applies to classifiers only" in proc.stderr


def test_the_held_out_evaluation_leaves_the_training_bit_identical(tmp_path, datasets):
    """Measuring the held-out loss every epoch (model in eval mode and back, loaders, masks of its own generators)
    changes nothing of the training: the weights equal, bit for bit, those of the same run without it, and so does
    every logged training loss."""
    plain = pretrain(tiny_pretrain(tmp_path / "plain", datasets, "train.epochs=2"))
    watched = pretrain(tiny_pretrain(tmp_path / "watched", datasets, "train.epochs=2", "pretrain.eval_every_epochs=1",
                                     "data.max_eval_samples=24"))
    assert "eval_loss" in watched and "eval_loss" not in plain
    a, b = weights(tmp_path / "plain"), weights(tmp_path / "watched")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [[r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r] for run in (tmp_path / "plain",
                                                                                                 tmp_path / "watched")]
    assert losses[0] == losses[1] and len(losses[0]) == 8


def test_a_run_keeps_its_held_out_images_as_the_atypicality_reference(tmp_path, datasets):
    """With 10 held-out photos (of 40) evaluated, model-last.pth and each checkpoint (for a resume) carry the Gaussian
    of their (log loss, log inpainter's error) at the last evaluation, the one `openmae evaluate` fits on the same
    photos' CSV; evaluate then measures atypicality against it by itself (the same photos: a mean of 2 (n-1)/n)."""
    photos = photo_folder(tmp_path / "photos", datasets)
    data = ["data.name=folder", f"data.path={photos}", "data.holdout=0.25", "data.max_samples=0"]
    run = tmp_path / "run"
    pretrain(tiny_pretrain(run, datasets, *data, "train.batch_size=10", "train.epochs=1", "pretrain.eval_every_epochs=1"))
    kept = load_file(run / "model-last.pth")["reconstruction_reference"]
    ckpt = sorted(run.glob("checkpoint-*.pth"))[-1]
    assert load_file(ckpt)["task_state"]["reference"] == kept and kept["count"] == 10 and kept["mask_ratio"] == 0.75
    table = tmp_path / "held.csv"
    proc = call_cli("evaluate", "--checkpoint", str(run / "model-last.pth"), *data, "data.num_workers=0",
                    "--predictions", str(table))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(table.open()))
    fitted = Reference.fit(*(np.array([float(r[k]) for r in rows]) for k in ("loss", "inpainting_loss")))
    np.testing.assert_allclose(kept["mean"], fitted.mean, rtol=1e-4)
    np.testing.assert_allclose(kept["precision"], fitted.precision, rtol=1e-3)
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["atypicality"] == pytest.approx(2 * 9 / 10, rel=1e-3)
    assert "against the run's held-out images (10 images): mean atypicality 1.80" in proc.stderr
