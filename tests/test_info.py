"""``openmae info``: what a weights file holds, for each kind of file openmae reads."""

import json

import pytest
import torch
from helpers import tiny_pretrain
from test_finetune import tiny_finetune

from openmae.cli.main import main
from openmae.convert.export import convert_file
from openmae.convert.summary import summarize
from openmae.engine.finetune import finetune
from openmae.engine.pretrain import pretrain

SET = ["data.mean=[0.31,0.42,0.53]", "data.std=[0.21,0.22,0.23]"]
STATS = {"mean": [0.31, 0.42, 0.53], "std": [0.21, 0.22, 0.23], "format": "image"}


def test_info_on_run_files_and_their_conversions(tmp_path, datasets, capsys):
    pretrain(tiny_pretrain(tmp_path / "pre", datasets, "train.epochs=1", *SET))
    ckpt = next((tmp_path / "pre").glob("checkpoint-*.pth"))
    info = summarize(ckpt)
    assert info["written_by"] == "an openmae pretrain run checkpoint"
    assert info["preset"] == "mae_vit_debug_patch4_32" and info["architecture_from"] == "the file's config"
    assert (info["encoder"], info["decoder"], info["classifier_classes"]) == (True, True, None)
    assert info["run"]["task"] == "pretrain" and info["run"]["step"] == 4 and info["run"]["data"] == "cifar10"
    assert info["normalization"] == STATS
    model = torch.load(tmp_path / "pre" / "model-last.pth", weights_only=True)["model"]
    assert info["parameters"] == sum(v.numel() for v in model.values() if v.is_floating_point())
    last = summarize(tmp_path / "pre" / "model-last.pth")
    assert last["written_by"] == "the weights of an openmae pretrain run (model-last.pth)"

    hf = summarize(convert_file(ckpt, tmp_path / "hf", "hf"))
    assert hf["written_by"] == "a Hugging Face model folder" and hf["layout"] == "Hugging Face (v4 names)"
    assert hf["preset"] == "mae_vit_debug_patch4_32" and hf["normalization"] == STATS

    # timm's layout keeps the run's config in its metadata; a bare encoder file (no config, as the official code
    # writes them) has its architecture read from shapes: the debug model's 2 heads read as 1, so no preset
    timm = summarize(convert_file(ckpt, tmp_path / "enc.safetensors", "timm"))
    assert timm["preset"] == "mae_vit_debug_patch4_32" and not timm["decoder"] and timm["normalization"] == STATS
    torch.save({"model": model}, tmp_path / "official.pth")
    bare = summarize(convert_file(tmp_path / "official.pth", tmp_path / "bare.safetensors", "timm"))
    assert bare["written_by"].startswith("weights without a config") and not bare["decoder"]
    assert bare["architecture_from"] == "the tensors' shapes (head counts guessed)" and bare["preset"] is None
    assert bare["normalization"] is None and timm["normalization_assumed"] is None
    assert bare["normalization_assumed"] == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                                             "format": "image"}  # another program's RGB weights (inherit_stats)
    assert main(["info", str(tmp_path / "bare.safetensors")]) == 0
    text = capsys.readouterr().out
    assert "normalisation: not recorded; ImageNet's assumed (mean [0.485, 0.456, 0.406] std [0.229, 0.224, 0.225])" \
           in text
    assert "parts: encoder alone (no decoder: to see or measure its reconstructions, train one behind it with " \
           "`openmae pretrain ... pretrain.init=<this file> pretrain.tune_blocks=0`)" in text
    # converted to a layout that keeps a normalisation, it records the assumption: the Hugging Face folder's
    # preprocessor_config.json (which AutoImageProcessor needs), an openmae file
    for dst, to in (("hf-bare", "hf"), ("bare-openmae.pth", "openmae")):
        assert summarize(convert_file(tmp_path / "official.pth", tmp_path / dst, to))["normalization"] == \
               bare["normalization_assumed"]

    assert main(["info", str(ckpt)]) == 0
    text = capsys.readouterr().out
    assert "an openmae pretrain run checkpoint" in text and "mae_vit_debug_patch4_32: width 64, depth 2" in text
    assert "mean [0.31, 0.42, 0.53]" in text
    assert main(["info", str(tmp_path / "enc.safetensors"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["embed_dim"] == 64


def test_info_on_a_classifier(tmp_path, datasets, capsys):
    finetune(tiny_finetune(tmp_path, datasets, "train.epochs=1"))
    info = summarize(tmp_path / "model-best.pth")
    assert info["written_by"] == "an openmae classifier (model-best.pth)"
    assert info["classifier_classes"] == 10 and not info["decoder"]
    assert info["metrics"]["epoch"] == 1 and "top1" in info["metrics"]
    assert main(["info", str(tmp_path / "model-best.pth")]) == 0
    kept = torch.load(tmp_path / "model-best.pth", weights_only=True)  # with the temperature fitted on its images
    assert (f"classifier head (10 classes: airplane, automobile, bird, cat, deer, dog, ...; calibrated at temperature "
            f"{kept['temperature']:.3g})") in capsys.readouterr().out
    from openmae.convert.export import convert_file  # its timm model folder: the same names, from its config

    assert summarize(convert_file(tmp_path / "model-best.pth", tmp_path / "clf", "hf"))["class_names"][:2] == [
        "airplane", "automobile"]
    # the timm export: tensors as timm reads them, the architecture and normalisation in its metadata
    exported = summarize(tmp_path / "model-timm.safetensors")
    assert exported["architecture_from"] == "the file's config" and exported["classifier_classes"] == 10
    assert exported["model"]["num_heads"] == 2 and exported["normalization"] == info["normalization"] is not None


def test_info_on_weights_that_are_not_a_vit(tmp_path):
    torch.save({"fc.weight": torch.zeros(10, 4), "fc.bias": torch.zeros(10)}, tmp_path / "other.pth")
    info = summarize(tmp_path / "other.pth")
    assert info["model"] is None and info["architecture_from"].startswith("nowhere: no ViT encoder among its keys")
    assert not info["encoder"] and info["parameters"] == 50


def test_info_on_a_run_folder_says_where_the_run_stands(tmp_path, datasets, capsys):
    """A run folder: stopped part-way (with the command that continues it), running now (the process holding its
    lock named), finished (with its last evaluation); read from its files, no checkpoint loaded."""
    import fcntl

    from openmae.engine.run_lock import LOCK_NAME
    from openmae.engine.run_status import run_status

    run = tmp_path / "run"
    knn_monitor = ("pretrain.knn_every_epochs=1", "pretrain.knn_train_samples=64", "pretrain.knn_eval_samples=32")
    assert pretrain(tiny_pretrain(run, datasets, "train.halt_after_steps=6", *knn_monitor))["halted"]
    assert main(["info", str(run)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{run}: an openmae pretrain run folder, not running, stopped before its last epoch\n")
    assert "  progress: epoch 1.50 of 3, step 6; last logged " in out and "knn_top1 " in out
    assert "checkpoints: checkpoint-000000006.pth" in out
    assert f"continue it: openmae pretrain -c {run / 'config.yaml'} -o {run} --resume auto" in out
    with pytest.raises(FileExistsError, match="already holds a run \\(a pretrain run stopped at epoch 1.50 of 3: "):
        pretrain(tiny_pretrain(run, datasets, *knn_monitor))  # the same again without --resume: says how far it got
    with open(run / LOCK_NAME, "a+") as holder:  # as the process running it holds it
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.truncate(0)
        holder.write("pid 4242 on node7, since 2026-12-04 04:00:00\n")
        holder.flush()
        status = run_status(run)
        assert (status["state"], status["held_by"]) == ("running", "pid 4242 on node7, since 2026-12-04 04:00:00")
    pretrain(tiny_pretrain(run, datasets, "train.resume=auto", *knn_monitor))
    assert main(["info", "--json", str(run)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["state"], status["epoch"], status["step"], status["held_by"]) == ("finished", 3.0, 12, None)
    assert set(status["evaluation"]) == {"knn_top1", "knn_top5", "knn_balanced_accuracy", "knn_macro_f1"}
    assert status["model_last"]
