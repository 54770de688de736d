"""The normalisation a model trained with travels with its weights: runs record it, the commands that start from
their files take it unless told otherwise, a resumed run takes its own, and converted files keep it."""

import json
import logging

import numpy as np
import pytest
import torch
from helpers import tiny_pretrain, weights
from PIL import Image
from test_finetune import tiny_finetune

from openmae.cli.main import main
from openmae.config import load_config
from openmae.convert.export import convert_file
from openmae.convert.files import load_file
from openmae.data.config import DataConfig
from openmae.data.datasets import STATS
from openmae.data.normalization import inherit_stats, recorded_stats, stats_record
from openmae.engine.evaluate import EvaluateConfig, run_evaluate
from openmae.engine.finetune import FinetuneConfig, FinetuneTask, finetune
from openmae.engine.knn_eval import KnnConfig, knn_eval
from openmae.engine.linprobe import LinprobeConfig, LinprobeTask
from openmae.engine.pretrain import pretrain

MEAN, STD = (0.31, 0.42, 0.53), (0.21, 0.22, 0.23)
SET = ["data.mean=[0.31,0.42,0.53]", "data.std=[0.21,0.22,0.23]"]


def run_record(mean=MEAN, std=STD, fmt="image") -> dict:
    return {"config": {"data": {"mean": list(mean), "std": list(std), "format": fmt}}}


def test_unset_normalisation_takes_the_record_and_set_one_is_kept(caplog):
    cfg = DataConfig()
    with caplog.at_level(logging.INFO, logger="openmae.data.normalization"):
        inherit_stats(cfg, run_record(), "run.pth", 3)
    assert (cfg.mean, cfg.std) == (MEAN, STD)
    assert "the normalisation run.pth was trained with" in caplog.text
    chosen = DataConfig(mean=(0.5,), std=(0.5,))
    inherit_stats(chosen, run_record(), "run.pth", 3)
    assert (chosen.mean, chosen.std) == ((0.5,), (0.5,))
    # a run's file recorded before runs wrote theirs (mean None): its dataset's own, as that run had
    old = DataConfig(name="cifar10")
    inherit_stats(old, {"config": {"data": {"mean": None, "std": None}}}, "x.pth", 3)
    assert old.mean is None
    # another program's (the released official weights, a bare state dict): ImageNet's for RGB images, with which the
    # official code, timm and Hugging Face trained MAE; CIFAR-10's own would shift every input (said: a warning)
    for obj in ({"model": {}}, {"w": torch.zeros(1)}):
        caplog.clear()
        other = DataConfig(name="cifar10")
        with caplog.at_level(logging.INFO, logger="openmae.data.normalization"):
            inherit_stats(other, obj, "mae_pretrain_vit_base.pth", 3)
        assert (other.mean, other.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) and recorded_stats(obj) is None
        assert [r.levelno for r in caplog.records] == [logging.WARNING]
        assert "mae_pretrain_vit_base.pth records no normalisation: its images are taken as normalised with " \
               "ImageNet's mean/std, as the official MAE code, timm and Hugging Face train MAE, not with cifar10's " \
               "own; set data.mean/std if it was trained otherwise" in caplog.text
    folder = DataConfig(name="folder", path="x")  # ImageNet's either way: said, not warned
    with caplog.at_level(logging.INFO, logger="openmae.data.normalization"):
        caplog.clear()
        inherit_stats(folder, {"model": {}}, "w.pth", 3)
    assert folder.mean == (0.485, 0.456, 0.406) and [r.levelno for r in caplog.records] == [logging.INFO]
    for fmt, channels in (("image", 1), ("array", 3)):  # grey images, arrays in their own units: nothing assumed
        unset = DataConfig(name="folder", path="x", format=fmt)
        inherit_stats(unset, {"model": {}}, "w.pth", channels)
        assert unset.mean is None
    # model-best.pth and converted files keep it under "normalization"; files without a format were images
    assert recorded_stats({"normalization": {"mean": [0.1], "std": [0.2]}}) == {"mean": [0.1], "std": [0.2],
                                                                                 "format": "image"}


def test_volumes_scaled_each_on_its_own_record_it_and_a_run_without_is_told(caplog):
    """Statistics measured on volumes under data.volume_norm are recorded with it; a run reading volumes otherwise
    does not take them and is told which setting the weights were trained with."""
    trained = DataConfig(name="folder", path="x", format="volume", volume_norm="zscore", mean=(0.01,), std=(0.99,))
    record = {"normalization": stats_record(trained)}
    assert recorded_stats(record) == {"mean": [0.01], "std": [0.99], "format": "volume", "volume_norm": "zscore"}
    plain = DataConfig(name="folder", path="x", format="volume")
    with caplog.at_level(logging.WARNING, logger="openmae.data.normalization"):
        inherit_stats(plain, record, "mr.pth", 1)
    assert plain.mean is None and "mr.pth was trained on volumes scaled with data.volume_norm=zscore, but this run " \
                                  "reads them with data.volume_norm=none" in caplog.text
    same = DataConfig(name="folder", path="x", format="volume", volume_norm="zscore")
    inherit_stats(same, record, "mr.pth", 1)
    assert (same.mean, same.std) == ((0.01,), (0.99,))
    scaled = DataConfig(name="folder", path="x", format="volume", volume_norm="percentile")
    inherit_stats(scaled, {"config": {"data": {"mean": [5.0], "std": [2.0], "format": "volume"}}}, "ct.pth", 1)
    assert scaled.mean is None  # recorded before volume_norm, or without it: units, not scaled volumes


@pytest.mark.parametrize("fmt, channels", [("array", 3), ("image", 4)])
def test_a_record_for_other_inputs_is_not_taken(fmt, channels, caplog):
    """Images' [0, 1] statistics say nothing of arrays in their own units; RGB statistics nothing of the bands an
    adapted model reads."""
    cfg = DataConfig(format=fmt)
    with caplog.at_level(logging.INFO, logger="openmae.data.normalization"):
        inherit_stats(cfg, run_record(), "rgb.pth", channels)
    assert cfg.mean is None and cfg.std is None
    assert f"is not used for {channels} channels of data.format={fmt}" in caplog.text


def test_downstream_commands_normalise_as_the_pretraining_did(tmp_path, datasets):
    """A pretraining run records its normalisation (a named dataset's own when none is set); fine-tuning, probes
    and kNN from its checkpoint take it unless they set theirs, and normalise their images with it."""
    pretrain(tiny_pretrain(tmp_path / "default", datasets, "train.epochs=1"))
    assert load_file(tmp_path / "default" / "model-last.pth")["config"]["data"]["mean"] == list(STATS["cifar10"][0])
    pretrain(tiny_pretrain(tmp_path / "pre", datasets, "train.epochs=1", *SET))
    ckpt = tmp_path / "pre" / "model-last.pth"
    assert recorded_stats(load_file(ckpt)) == {"mean": list(MEAN), "std": list(STD), "format": "image"}
    assert "0.31" in (tmp_path / "pre" / "config.yaml").read_text()

    ft = tiny_finetune(tmp_path / "ft", datasets, "model.name=auto", f"finetune.init={ckpt}")
    FinetuneTask(ft, torch.device("cpu"))
    assert (ft.data.mean, ft.data.std) == (MEAN, STD)
    own = tiny_finetune(tmp_path / "ft2", datasets, "model.name=auto", f"finetune.init={ckpt}", "data.mean=[0.5]",
                        "data.std=[0.5]")
    FinetuneTask(own, torch.device("cpu"))
    assert own.data.mean == (0.5,)
    probe = load_config(LinprobeConfig, overrides=[
        "model.name=auto", f"linprobe.init={ckpt}", "data.name=cifar10", f"data.root={datasets}", "data.max_samples=32",
        "data.max_eval_samples=16", "data.num_workers=0", f"train.output_dir={tmp_path / 'probe'}"])
    LinprobeTask(probe, torch.device("cpu"))
    assert (probe.data.mean, probe.data.std) == (MEAN, STD)

    # kNN from the checkpoint equals kNN told the pretraining's normalisation, not kNN with the dataset's own
    knn = lambda *extra: knn_eval(load_config(KnnConfig, overrides=[
        "model.name=auto", f"knn.init={ckpt}", "data.name=cifar10", f"data.root={datasets}", "data.max_samples=64",
        "data.max_eval_samples=32", "data.num_workers=0", "knn.standardize=false", "knn.k=3", *extra]))
    inherited, told = knn(), knn(*SET)
    assert inherited == told


def test_evaluate_normalises_as_the_classifier_trained(tmp_path, datasets):
    """model-best.pth records the fine-tuning's normalisation: evaluate without data.mean/std gives the numbers the
    run recorded; told another normalisation, other numbers (the inputs really are normalised with it)."""
    fashion = ["data.name=fashion-mnist", f"data.root={datasets}", "data.max_samples=512", "data.max_eval_samples=128",
               "data.num_workers=0"]
    finetune(load_config(FinetuneConfig, overrides=[
        *fashion, "model.name=mae_vit_tiny_patch7_28_gray", "model.depth=2", "train.epochs=8", "train.warmup_epochs=1",
        "train.batch_size=64", "train.blr=5e-3", "train.progress=false", "train.tensorboard=false",
        f"train.output_dir={tmp_path}", "finetune.mixup=0", "finetune.cutmix=0", "finetune.auto_augment=",
        "finetune.reprob=0", "data.mean=[0.2]", "data.std=[0.4]"]))
    best = load_file(tmp_path / "model-best.pth")
    assert best["normalization"] == {"mean": [0.2], "std": [0.4], "format": "image"}
    assert best["metrics"]["top1"] > 30  # it learned something its inputs' normalisation matters to
    evaluate = lambda *extra: run_evaluate(load_config(EvaluateConfig, overrides=[
        f"evaluate.init={tmp_path / 'model-best.pth'}", *fashion, *extra]))
    out = evaluate()
    assert out["eval_loss"] == pytest.approx(best["metrics"]["eval_loss"], rel=1e-5)
    assert out["top1"] == pytest.approx(best["metrics"]["top1"], abs=1e-9)
    assert evaluate("data.mean=[0.5]", "data.std=[0.25]")["eval_loss"] != pytest.approx(out["eval_loss"], rel=1e-2)


def test_resumed_run_normalises_as_before_the_stop(tmp_path, datasets):
    """Resumed without data.mean/std (the dataset's own would differ), a run takes those in its checkpoint and ends
    equal to the uninterrupted run."""
    pretrain(tiny_pretrain(tmp_path / "full", datasets, *SET))
    assert pretrain(tiny_pretrain(tmp_path / "cut", datasets, *SET, "train.halt_after_steps=6"))["halted"]
    resumed = tiny_pretrain(tmp_path / "cut", datasets, "train.resume=auto")
    pretrain(resumed)
    assert (resumed.data.mean, resumed.data.std) == (MEAN, STD)
    a, b = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_visualize_and_converted_files_keep_the_normalisation(tmp_path, datasets):
    pretrain(tiny_pretrain(tmp_path / "pre", datasets, "train.epochs=1", *SET))
    ckpt = str(tmp_path / "pre" / "model-last.pth")
    photo = str(sorted((datasets / "imagenet-sample").glob("*.JPEG"))[0])
    pictures = {}
    for name, extra in (("inherited", []), ("told", SET), ("other", ["data.mean=[0.5]", "data.std=[0.5]"])):
        assert main(["visualize", "--checkpoint", ckpt, photo, "-o", str(tmp_path / name), *extra]) == 0
        pictures[name] = np.asarray(Image.open(next((tmp_path / name).glob("*.png")))).tolist()
    assert pictures["inherited"] == pictures["told"] != pictures["other"]

    assert load_file(convert_file(ckpt, tmp_path / "o.pth", "openmae"))["normalization"]["mean"] == list(MEAN)
    hf = convert_file(ckpt, tmp_path / "hf", "hf")
    processor = json.loads((hf / "preprocessor_config.json").read_text())
    assert (processor["image_mean"], processor["image_std"], processor["size"]) == (list(MEAN), list(STD),
                                                                                   {"height": 32, "width": 32})
    from transformers import ViTImageProcessor

    pixels = ViTImageProcessor.from_pretrained(str(hf))(Image.open(photo).convert("RGB"), return_tensors="pt")
    resized = Image.open(photo).convert("RGB").resize((32, 32), Image.BICUBIC)
    expected = (torch.from_numpy(np.array(resized)).float().permute(2, 0, 1) / 255
                - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    # its resize rounds a few pixels the other way: within one 8-bit level
    torch.testing.assert_close(pixels["pixel_values"][0], expected, atol=1.001 / 255 / min(STD), rtol=0)
    assert (pixels["pixel_values"][0] - expected).abs().gt(1e-5).float().mean() < 0.01
