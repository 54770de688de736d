"""``openmae evaluate``: a trained classifier measured again without training gives the numbers its run recorded;
per-class accuracy and the confusion matrix agree with them; files that are not classifiers are refused by name."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_finetune import tiny_finetune

from openmae.cli.main import main
from openmae.config import ConfigError, load_config
from openmae.convert.files import load_file, save_file
from openmae.data.build import eval_batches, source_for
from openmae.engine.config import ModelSection
from openmae.engine.evaluate import EvaluateConfig, load_classifier, run_evaluate
from openmae.engine.finetune import finetune
from openmae.engine.linprobe import LinprobeConfig, linprobe
from openmae.engine.logging import read_metrics
from openmae.models.mae import MaskedAutoencoder

DATA = ["data.name=cifar10", "data.max_eval_samples=32", "data.num_workers=0"]


def evaluate_cfg(init, datasets, *extra: str) -> EvaluateConfig:
    return load_config(EvaluateConfig, overrides=[f"evaluate.init={init}", f"data.root={datasets}", *DATA, *extra])


def test_evaluate_gives_the_numbers_the_fine_tuning_run_recorded(tmp_path, datasets, capsys):
    """model-best.pth (chosen on held-out images) measured again on them equals its stored metrics; model-last.pth
    equals the last epoch's; the CLI prints the same and writes per-class numbers and the confusion matrix."""
    finetune(tiny_finetune(tmp_path, datasets, "data.holdout=0.25", "train.epochs=3"))
    best = load_file(tmp_path / "model-best.pth")
    out = run_evaluate(evaluate_cfg(tmp_path / "model-best.pth", datasets, "data.holdout=0.25"))
    for key in ("top1", "top5"):
        assert out[key] == pytest.approx(best["metrics"][key], abs=1e-9)
    assert out["eval_loss"] == pytest.approx(best["metrics"]["eval_loss"], rel=1e-5)
    last = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "top1" in r][-1]
    assert last["epoch"] == 3
    out_last = run_evaluate(evaluate_cfg(tmp_path / "model-last.pth", datasets, "data.holdout=0.25"))
    assert out_last["top1"] == pytest.approx(last["top1"], abs=1e-9)

    # the confusion matrix: rows are true classes; its diagonal is top-1, its rows the per-class accuracy
    conf = torch.tensor(out["confusion"])
    assert conf.shape == (10, 10) and conf.sum().item() == out["samples"] == 32  # data.max_eval_samples
    assert 100.0 * conf.trace().item() / out["samples"] == pytest.approx(out["top1"])
    for i, name in enumerate(out["classes"]):
        if conf[i].sum():
            assert out["per_class_top1"][name] == pytest.approx(100.0 * conf[i, i].item() / conf[i].sum().item())
    assert out["classes"][0] == "airplane"

    # the command line: the same numbers, printed and written
    json_out = tmp_path / "eval.json"
    code = main(["evaluate", "--checkpoint", str(tmp_path / "model-best.pth"), "--data-root", str(datasets), *DATA,
                 "data.holdout=0.25", "-o", str(json_out), "--plot", str(tmp_path / "confusion.png")])
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    written = json.loads(json_out.read_text())
    assert printed["top1"] == written["top1"] == pytest.approx(out["top1"])
    assert written["confusion"] == out["confusion"]
    # ROC-AUC (ten classes): the mean of the classes' one-vs-rest AUCs
    aucs = [v for v in written["per_class_auc"].values() if v is not None]
    assert len(aucs) == 10 and written["roc_auc"] == pytest.approx(sum(aucs) / 10)
    # balanced accuracy: the mean of the per-class top-1 (recall) over the classes with images
    present = [v for v in out["per_class_top1"].values() if v == v]
    assert written["balanced_accuracy"] == pytest.approx(sum(present) / len(present))
    assert set(written["per_class_f1"]) == set(written["per_class_precision"]) == set(out["classes"])
    assert Image.open(tmp_path / "confusion.png").size[0] > 300  # the figure was drawn


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_evaluate_gives_the_numbers_an_online_probe_recorded(tmp_path, datasets, pooling):
    cfg = load_config(LinprobeConfig, overrides=[
        "model.name=mae_vit_debug_patch4_32", f"data.root={datasets}", *DATA, "data.max_samples=64",
        "linprobe.mode=online", f"linprobe.pooling={pooling}", "train.epochs=1", "train.warmup_epochs=0",
        "train.batch_size=16", "train.progress=false", "train.tensorboard=false", f"train.output_dir={tmp_path}"])
    linprobe(cfg)
    best = load_file(tmp_path / "model-best.pth")
    assert best["pooling"] == pooling
    out = run_evaluate(evaluate_cfg(tmp_path / "model-best.pth", datasets))
    assert out["samples"] == 32
    assert out["top1"] == pytest.approx(best["metrics"]["top1"], abs=1e-9)
    assert out["eval_loss"] == pytest.approx(best["metrics"]["eval_loss"], rel=1e-5)


def test_flip_test_time_augmentation_averages_the_probabilities_of_each_image_and_its_mirror(tmp_path, datasets):
    """evaluate.tta=flip: top-1 / top-5 / loss of the mean of softmax(image) and softmax(mirrored image), computed
    here by hand from the same classifier and images; different from the single view; other values refused."""
    finetune(tiny_finetune(tmp_path, datasets, "train.epochs=1"))
    obj = load_file(tmp_path / "model-best.pth")  # one epoch leaves it near uniform: a random head so views disagree
    obj["model"]["head.weight"] = torch.randn(obj["model"]["head.weight"].shape, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "sharp.pth"
    save_file(obj, path)
    single = run_evaluate(evaluate_cfg(path, datasets))
    out = run_evaluate(evaluate_cfg(path, datasets, "evaluate.tta=flip"))
    assert out["tta"] == "flip" and single["tta"] == "none"

    cfg = evaluate_cfg(path, datasets)
    model, mae_cfg = load_classifier(str(path))
    model.eval()
    probs, labels = [], []
    d = cfg.data
    source = source_for(d, d.eval_split, mae_cfg.in_chans, d.max_eval_samples)
    with torch.no_grad():
        for batch in eval_batches(d, d.eval_split, mae_cfg.img_size, mae_cfg.in_chans, 8, source=source):
            x = batch.images
            probs.append((model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2)  # (B, classes)
            labels.append(batch.labels)
    p, y = torch.cat(probs), torch.cat(labels)
    assert len(y) == out["samples"] == 32
    assert out["top1"] == pytest.approx(100.0 * (p.argmax(1) == y).float().mean().item(), abs=1e-9)
    assert out["top5"] == pytest.approx(100.0 * (p.topk(5, 1).indices == y[:, None]).any(1).float().mean().item(),
                                        abs=1e-9)
    assert out["eval_loss"] == pytest.approx(-p[torch.arange(len(y)), y].log().mean().item(), rel=1e-5)
    # the mirror was really looked at: the single view's loss is farther off than the tolerance above (~2e-4)
    assert abs(out["eval_loss"] - single["eval_loss"]) > 1e-3
    with pytest.raises(ConfigError, match="evaluate.tta.*none or flip"):
        evaluate_cfg(path, datasets, "evaluate.tta=rotate")


@pytest.mark.parametrize("pooling", ["avg", "token"])
def test_evaluate_measures_a_classifier_of_the_official_fine_tuning_code(tmp_path, datasets, caplog, pooling):
    """The official fine-tuning code's checkpoints (timm's keys, {'model': ...} with or without its args; global
    pooling: fc_norm in place of the final norm, --cls_token: the norm) were refused for having no openmae config.
    They are measured as the classifier they hold: the numbers of that classifier on the same images, normalised with
    ImageNet's statistics as the official code does; with args, the architecture they name (two heads here),
    without, the shapes' (warned: head counts are guessed)."""
    import argparse
    import logging
    from dataclasses import replace

    from openmae.engine.classifier import evaluate
    from openmae.models.vit import create_classifier

    mae_cfg = ModelSection(name="mae_vit_debug_patch4_32").resolve()
    torch.manual_seed(0)
    clf = create_classifier(mae_cfg, 10, pooling)
    for block in clf.blocks:  # weights away from their init, so that one head or two measure differently
        torch.nn.init.normal_(block.attn.qkv.weight, std=0.5)
    torch.nn.init.normal_(clf.head.weight, std=1.0)  # and a head that is not near uniform (its init: std 2e-5)
    clf.eval()
    with_args = tmp_path / "checkpoint-99.pth"
    torch.save({"model": clf.state_dict(), "epoch": 99, "args": argparse.Namespace(
        model="vit_debug_patch4_32", input_size=32, nb_classes=10, global_pool=pooling == "avg", blr=1e-3,
        data_path="/cifar10")}, with_args)
    cfg = evaluate_cfg(with_args, datasets)
    # normalised as the official code does, with ImageNet's statistics (not CIFAR-10's, which the data would take)
    d = replace(cfg.data, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    source = source_for(d, d.eval_split, 3, d.max_eval_samples)
    want = evaluate(clf, eval_batches(d, d.eval_split, (32, 32), 3, 8, source=source), torch.device("cpu"))
    out = run_evaluate(cfg)
    assert out["samples"] == 32 and out["top1"] == want["top1"] and out["top5"] == want["top5"]
    assert out["eval_loss"] == pytest.approx(want["eval_loss"], rel=1e-6)

    bare = tmp_path / "mae_finetuned_vit_debug.pth"  # as released: the weights alone
    torch.save({"model": clf.state_dict()}, bare)
    with caplog.at_level(logging.WARNING, logger="openmae.evaluate"):
        guessed = run_evaluate(evaluate_cfg(bare, datasets, "data.mean=[0.485,0.456,0.406]",
                                            "data.std=[0.229,0.224,0.225]"))
    assert "read from its tensors' shapes as width 64, depth 2, patch 4, with 1 head (the paper's" in caplog.text
    assert "set model.num_heads=<its heads> if it had others" in caplog.text
    assert guessed["eval_loss"] != pytest.approx(want["eval_loss"], rel=1e-6)  # one 64-wide head, not two: other numbers
    # the heads it had, set: that classifier's numbers again, unwarned; with ImageNet's statistics unasked (the file
    # records none: another program's RGB weights)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="openmae.evaluate"):
        told = run_evaluate(evaluate_cfg(bare, datasets, "model.num_heads=2"))
    assert "records no architecture" not in caplog.text
    assert told["top1"] == want["top1"] and told["eval_loss"] == pytest.approx(want["eval_loss"], rel=1e-6)
    # a preset named over it: that preset's classifier, nothing guessed; a preset it is not: what each holds
    with caplog.at_level(logging.WARNING, logger="openmae.evaluate"):
        named = run_evaluate(evaluate_cfg(bare, datasets, "model.name=mae_vit_debug_patch4_32"))
    assert named["eval_loss"] == told["eval_loss"] and "records no architecture" not in caplog.text
    with pytest.raises(ConfigError, match=r"do not fit the classifier model.name=mae_vit_base_patch16 describes "
                                          r"\(width 768, depth 12, patch 16, .* pooling, 10 classes\): Missing key.* "
                                          r"the file holds width 64, depth 2, patch 4: name that model"):
        run_evaluate(evaluate_cfg(bare, datasets, "model.name=mae_vit_base_patch16"))


def test_evaluate_refuses_files_that_are_not_classifiers(tmp_path, datasets):
    mae_cfg = ModelSection(name="mae_vit_debug_patch4_32").resolve()
    mae = MaskedAutoencoder(mae_cfg)
    # an encoder without its decoder (a pretrained MAE with one is measured by its reconstruction)
    save_file({"model": mae.encoder_state_dict(), "model_config": mae_cfg.to_dict(), "config": {"pretrain": {}}},
              tmp_path / "pretrain.pth")
    with pytest.raises(ConfigError, match="pretrained encoder .*no decoder.*openmae finetune"):
        run_evaluate(evaluate_cfg(tmp_path / "pretrain.pth", datasets))
    # the official encoder-only layout (mae_pretrain_vit_*: the tensors alone): what it is, and how to measure its
    # reconstructions (a decoder trained behind it)
    official = tmp_path / "mae_pretrain_vit_debug.pth"
    torch.save({"model": mae.encoder_state_dict()}, official)
    with pytest.raises(ConfigError, match=rf"pretrained encoder .*to measure its reconstructions, train a decoder "
                                          rf"behind the frozen encoder first .*pretrain.init={official} "
                                          r"pretrain.tune_blocks=0"):
        run_evaluate(evaluate_cfg(official, datasets))
    save_file({"model": {}, "model_config": mae_cfg.to_dict(), "num_classes": 10, "mode": "cached", "last_blocks": 2},
              tmp_path / "cached.pth")
    with pytest.raises(ConfigError, match="cached features"):
        run_evaluate(evaluate_cfg(tmp_path / "cached.pth", datasets))
    save_file({"model": {"head.weight": torch.zeros(10, 64)}, "model_config": mae_cfg.to_dict(), "num_classes": 10,
               "global_pool": "avg"}, tmp_path / "head-only.pth")
    with pytest.raises(ConfigError, match="do not fit the classifier"):
        run_evaluate(evaluate_cfg(tmp_path / "head-only.pth", datasets))
    with pytest.raises(ConfigError, match=r"evaluate.mask_ratio=0.5 applies to a pretrained MAE.*a classifier"):
        run_evaluate(evaluate_cfg(tmp_path / "head-only.pth", datasets, "evaluate.mask_ratio=0.5"))
    with pytest.raises(ConfigError, match=r"evaluate.rank_by=relative_loss applies to a pretrained MAE.*a classifier"):
        run_evaluate(evaluate_cfg(tmp_path / "head-only.pth", datasets, "evaluate.rank_by=relative_loss"))
    with pytest.raises(ConfigError, match=r"evaluate.reference=errors.csv applies to a pretrained MAE.*a classifier"):
        run_evaluate(evaluate_cfg(tmp_path / "head-only.pth", datasets, "evaluate.reference=errors.csv"))
    with pytest.raises(ConfigError, match=r"data.name=folder reads no labels.*is a classifier"):
        run_evaluate(evaluate_cfg(tmp_path / "head-only.pth", datasets, "data.name=folder", f"data.path={tmp_path}"))
    save_file({"head.weight": torch.zeros(10, 64)}, tmp_path / "model-timm.safetensors")
    with pytest.raises(ConfigError, match="carries no architecture"):
        run_evaluate(evaluate_cfg(tmp_path / "model-timm.safetensors", datasets))
    with pytest.raises(ConfigError, match="evaluate.init"):
        load_config(EvaluateConfig, overrides=DATA)


def test_evaluate_refuses_a_dataset_with_other_classes(tmp_path, datasets):
    """A 10-class CIFAR-10 classifier on a 3-class image folder: refused with both counts, not a crash in the loss."""
    finetune(tiny_finetune(tmp_path / "run", datasets, "train.epochs=1"))
    for cls in ("a", "b", "c"):
        (tmp_path / "folder" / cls).mkdir(parents=True)
        Image.new("RGB", (32, 32), (10, 20, 30)).save(tmp_path / "folder" / cls / "x.png")
    cfg = load_config(EvaluateConfig, overrides=[
        f"evaluate.init={tmp_path / 'run' / 'model-best.pth'}", "data.name=imagefolder",
        f"data.path={tmp_path / 'folder'}", "data.num_workers=0"])
    with pytest.raises(ConfigError, match="has 10 outputs but .* has 3 classes"):
        run_evaluate(cfg)


def test_checkpoints_of_timms_training_script_read_as_timm_built_them(tmp_path, datasets, caplog):
    """timm's train.py checkpoints (`model_best.pth.tar`: state_dict, its args, arch naming the model) were read as
    weights without a config: head counts guessed from the shapes (two 64-wide heads read as one), the dataset's
    normalisation, and `evaluate` refused them. The timm model their arch and model_kwargs name says the heads, the
    pooling and the normalisation (its pretrained_cfg's, as timm's training took them): `evaluate` gives that model's
    own numbers on the same images, and kNN builds its encoder without a guess."""
    import argparse
    import logging
    from dataclasses import replace

    import timm
    from timm.utils import CheckpointSaver

    from openmae.convert.summary import summarize
    from openmae.engine.classifier import evaluate
    from openmae.engine.weights import resolve_encoder

    kwargs = {"img_size": 32, "patch_size": 4, "embed_dim": 64, "depth": 2, "num_heads": 2, "global_pool": "avg"}
    args = argparse.Namespace(model="vit_base_patch16_224", model_kwargs=kwargs, in_chans=None, mean=None, std=None,
                              num_classes=10, lr=1e-3, data_dir="/cifar10")
    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=10, **kwargs)
    for block in model.blocks:  # weights away from their init, so that one head or two measure differently
        torch.nn.init.normal_(block.attn.qkv.weight, std=0.5)
    torch.nn.init.normal_(model.head.weight, std=1.0)
    model.eval()
    saver = CheckpointSaver(model, torch.optim.AdamW(model.parameters()), args=args, checkpoint_dir=str(tmp_path))
    saver.save_checkpoint(epoch=3, metric=41.0)
    best = tmp_path / "model_best.pth.tar"
    assert best.is_file()
    ema = tmp_path / "ema.pth.tar"  # with --model-ema, the averaged weights beside the trained ones
    averaged = timm.create_model(args.model, num_classes=10, **kwargs).eval()
    torch.nn.init.normal_(averaged.head.weight, std=1.0)
    torch.save({**torch.load(best, weights_only=False), "state_dict_ema": averaged.state_dict()}, ema)
    assert "with EMA weights (state_dict_ema): model.ema=true reads them" in summarize(ema)["written_by"]

    info = summarize(best)
    assert info["written_by"] == "a checkpoint of timm's train.py after epoch 3 (--model vit_base_patch16_224)"
    assert info["architecture_from"] == "timm's model vit_base_patch16_224" and info["model"]["num_heads"] == 2
    # vit_base_patch16_224's default weights (augreg) normalise with 0.5: what train.py took with no --mean/--std
    assert info["normalization"] == {"mean": [0.5] * 3, "std": [0.5] * 3, "format": "image"}

    cfg = evaluate_cfg(best, datasets)
    d = replace(cfg.data, mean=(0.5,) * 3, std=(0.5,) * 3)
    source = source_for(d, d.eval_split, 3, d.max_eval_samples)
    want = evaluate(model, eval_batches(d, d.eval_split, (32, 32), 3, 8, source=source), torch.device("cpu"))
    out = run_evaluate(cfg)
    assert out["top1"] == want["top1"] and out["top5"] == want["top5"]
    assert out["eval_loss"] == pytest.approx(want["eval_loss"], rel=1e-6)
    # model.ema=true: the averaged weights measured (and read as an encoder), not the trained ones
    want_ema = evaluate(averaged, eval_batches(d, d.eval_split, (32, 32), 3, 8, source=source), torch.device("cpu"))
    out_ema = run_evaluate(evaluate_cfg(ema, datasets, "model.ema=true"))
    assert out_ema["eval_loss"] == pytest.approx(want_ema["eval_loss"], rel=1e-6) != out["eval_loss"]
    assert out_ema["top1"] == want_ema["top1"]
    assert torch.equal(resolve_encoder(ModelSection(name="auto", ema=True), str(ema))[1]["blocks.0.attn.qkv.weight"],
                       averaged.state_dict()["blocks.0.attn.qkv.weight"])
    with pytest.raises(ValueError, match=r"model.ema=true: .*model_best.pth.tar holds no averaged weights \(keys "):
        run_evaluate(evaluate_cfg(best, datasets, "model.ema=true"))

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="openmae.convert.checkpoints"):
        encoder_cfg, sd, _ = resolve_encoder(ModelSection(name="auto"), str(best))
    assert encoder_cfg.num_heads == 2 and "records no architecture" not in caplog.text  # named, not guessed
    # names timm cannot build here (unknown; on the hub, which a machine without network would wait for): the shapes
    from openmae.convert.timm_train import timm_model_facts

    for arch in ("vit_nonexistent_patch4", "hf-hub:timm/vit_base_patch16_224.mae"):
        assert timm_model_facts({"arch": arch, "state_dict": {}, "args": {"model": arch}}) is None
    assert torch.equal(sd["blocks.0.attn.qkv.weight"], model.state_dict()["blocks.0.attn.qkv.weight"])


def test_class_scores_of_a_confusion_matrix():
    """Balanced accuracy and macro F1 as scikit-learn defines them (zero_division=0), from hand-counted matrices:
    a class the images lack (third) counts in neither mean; one never predicted has precision and F1 0."""
    from openmae.eval.confusion import class_scores

    s = class_scores([[5, 1, 0], [2, 2, 0], [0, 0, 0]])  # class 0: TP 5, FN 1, FP 2; class 1: TP 2, FN 2, FP 1
    assert s["balanced_accuracy"] == pytest.approx(100 * (5 / 6 + 2 / 4) / 2)
    assert s["macro_f1"] == pytest.approx(100 * (10 / 13 + 4 / 7) / 2)  # F1 = 2TP / (2TP + FP + FN)
    assert s["per_class_recall"][2] is None and s["per_class_f1"][2] is None
    assert s["per_class_precision"][:2] == pytest.approx([100 * 5 / 7, 100 * 2 / 3])
    never = class_scores([[3, 0], [2, 0]])  # everything predicted as class 0: top-1 60%, balanced 50%
    assert (never["balanced_accuracy"], never["macro_f1"]) == (50.0, pytest.approx(100 * (0.75 + 0) / 2))
    assert never["per_class_precision"] == [60.0, 0.0] and never["per_class_f1"] == [75.0, 0.0]


def test_roc_auc_is_the_chance_a_positive_outranks_a_negative():
    """ROC-AUC by average ranks equals its definition counted pair by pair (ties count half), on scores with many
    ties; scikit-learn's documented example gives 0.75; a class without positives or negatives has none."""
    import numpy as np

    from openmae.eval.ranking import auc_scores, roc_auc

    rng = np.random.default_rng(0)
    for _ in range(100):
        scores = rng.integers(0, 5, 40).astype(np.float32)
        positive = rng.random(40) < 0.3
        pos, neg = scores[positive], scores[~positive]
        pairs = (pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()
        assert roc_auc(scores, positive) == pytest.approx(pairs / (len(pos) * len(neg)), abs=1e-12)
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True])) == 0.75
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.4, 0.0]])
    out = auc_scores(probs, np.array([0, 1, 1]))  # class 2 has no images
    assert out["per_class_auc"] == [100.0, 100.0, None] and out["roc_auc"] == 100.0
    # every class's AUC from its sorted column equals roc_auc's ranks of the whole column, ties included
    probs = rng.integers(0, 6, (300, 7)).astype(np.float32) / 5
    labels = rng.integers(0, 7, 300)
    labels[labels == 6] = 5  # class 6: no positives
    per_class = auc_scores(probs, labels)["per_class_auc"]
    assert per_class[6] is None
    assert per_class[:6] == pytest.approx([100 * roc_auc(probs[:, c], labels == c) for c in range(6)], abs=1e-10)


def test_roc_auc_past_a_hundred_classes_and_its_limit(monkeypatch, caplog):
    """A classifier of 150 classes is measured ROC-AUC (each class's roc_auc of its softmax column, averaged);
    past MAX_KEPT_PROBABILITIES images x classes it is left out and the log says so; the images of all the ranks
    (``all_images``), not of this rank's part, decide; choosing model-best.pth by ROC-AUC is then refused, naming the
    limit."""
    import openmae.eval.ranking as ranking
    from openmae.data.loader import Batch
    from openmae.engine.classifier import BestKeeper, evaluate

    torch.manual_seed(0)
    model = torch.nn.Linear(8, 150)
    x, y = torch.randn(600, 8), torch.randint(0, 150, (600,))
    batches = [Batch(x[i:i + 100], y[i:i + 100], y[i:i + 100], 0) for i in range(0, 600, 100)]
    cpu = torch.device("cpu")
    out = evaluate(model, batches, cpu, confusion=True, total=600)
    with torch.no_grad():
        probs = model(x).softmax(1).numpy()
    aucs = [ranking.roc_auc(probs[:, c], y.numpy() == c) for c in range(150)]
    assert [a is None for a in out["per_class_auc"]] == [bool(np.isnan(a)) for a in aucs]
    assert out["roc_auc"] == pytest.approx(100 * np.nanmean(aucs), abs=1e-9) and 30 < out["roc_auc"] < 70

    monkeypatch.setattr(ranking, "MAX_KEPT_PROBABILITIES", 600 * 150 - 1)
    with caplog.at_level("INFO", logger="openmae.classifier"):
        out = evaluate(model, batches, cpu, confusion=True, total=600)
    assert "roc_auc" not in out and "per_class_auc" not in out and out["top1"] >= 0
    assert "ROC-AUC not measured: 600 images x 150 classes are more probabilities than an evaluation keeps" \
           in caplog.text
    assert "roc_auc" in evaluate(model, batches[:3], cpu, total=300)  # half the images: kept
    assert "roc_auc" not in evaluate(model, batches[:3], cpu, total=300, all_images=600)  # a rank's half of 600
    with pytest.raises(ValueError, match=r"ROC-AUC is measured while the evaluation's images times its classes "
                                         r"stay within 67,108,864"):
        BestKeeper(Path("."), {}, {}, select_by="roc_auc").update({}, out, 1, False, write=False)


def test_evaluate_writes_each_images_predictions(tmp_path, datasets):
    """--predictions: a CSV row an image in the split's order, its class, the top-5 classes (most probable first)
    and their probabilities; its 'correct' column gives top-1, its rows the confusion matrix."""
    import csv

    finetune(tiny_finetune(tmp_path, datasets, "train.epochs=1"))
    out_csv = tmp_path / "predictions.csv"
    code = main(["evaluate", "--checkpoint", str(tmp_path / "model-best.pth"), "--data-root", str(datasets), *DATA,
                 "-o", str(tmp_path / "eval.json"), "--predictions", str(out_csv),
                 "--calibration-plot", str(tmp_path / "reliability.png")])
    assert code == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == result["samples"] == 32
    assert 100.0 * sum(int(r["correct"]) for r in rows) / 32 == pytest.approx(result["top1"])
    # the expected calibration error: of the top class's probability against being right
    from openmae.eval.calibration import calibration_bins

    binned = calibration_bins(np.array([float(r["probability"]) for r in rows]), np.array([int(r["correct"]) for r in rows]))
    assert result["ece"] == pytest.approx(binned["ece"], abs=1e-3) and result["calibration"]["count"] == binned["count"]
    # the temperature model-best.pth keeps was fitted on these same images (no data.holdout): evaluate fits it again
    kept = torch.load(tmp_path / "model-best.pth", weights_only=True)
    assert result["temperature"] == kept["temperature"] == result["temperature_here"]
    assert (tmp_path / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    names = result["classes"]
    counted = [[0] * 10 for _ in names]
    for r in rows:
        counted[names.index(r["label"])][names.index(r["predicted"])] += 1
        probs = [float(p) for p in r["top5_probabilities"].split()]
        assert r["top5"].split()[0] == r["predicted"] and probs == sorted(probs, reverse=True)
        assert float(r["probability"]) == probs[0] and Path(r["image"]).is_file()
    assert counted == result["confusion"]
