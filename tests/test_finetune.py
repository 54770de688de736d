"""Fine-tuning's weight average (finetune.model_ema): the average itself, what is evaluated and exported, and
exact resume."""

from pathlib import Path

import numpy as np
import pytest
import torch

import openmae
from openmae.config import ConfigError, load_config
from openmae.convert.files import load_file, unwrap_state_dict
from openmae.engine.checkpoint import CheckpointError, CheckpointManager
from openmae.engine.finetune import FinetuneConfig, FinetuneTask, finetune
from openmae.engine.logging import read_metrics
from openmae.engine.loop import launch


def tiny_finetune(out: Path, data_root: Path, *extra: str) -> FinetuneConfig:
    """Debug ViT from random init on 64 real CIFAR-10 images (4 steps of 16 an epoch), 32 test images."""
    return load_config(FinetuneConfig, overrides=[
        "model.name=mae_vit_debug_patch4_32", "data.name=cifar10", f"data.root={data_root}", "data.max_samples=64",
        "data.max_eval_samples=32", "data.num_workers=0", "train.epochs=2", "train.warmup_epochs=1",
        "train.batch_size=16", "train.log_every_steps=1", "train.progress=false", "train.tensorboard=false",
        f"train.output_dir={out}", "finetune.mixup=0", "finetune.cutmix=0", "finetune.auto_augment=",
        "finetune.reprob=0", *extra])


def test_ema_is_the_average_of_the_trained_weights_and_is_what_gets_evaluated(tmp_path, datasets):
    cfg = tiny_finetune(tmp_path, datasets, "finetune.model_ema=true", "finetune.model_ema_decay=0.8",
                        "finetune.model_ema_warmup=false")
    made: list[FinetuneTask] = []
    snapshots: list[dict[str, torch.Tensor]] = []

    def make(info, resume):
        task = FinetuneTask(cfg, info.device)
        snapshots.append({k: v.detach().clone() for k, v in task.model.state_dict().items()})
        update = task.after_step

        def after_step(step: int) -> None:  # the trained weights after every optimizer step
            snapshots.append({k: v.detach().clone() for k, v in task.model.state_dict().items()})
            update(step)

        task.after_step = after_step
        made.append(task)
        return task

    out = launch(make, cfg)
    assert len(snapshots) == 1 + 8
    # timm's schedule: the first update copies the weights (decay 0), then e = 0.8 e + 0.2 w
    expected = dict(snapshots[1])
    for w in snapshots[2:]:
        expected = {k: 0.8 * expected[k] + 0.2 * w[k] for k in w}
    ema = made[0].ema.module.state_dict()
    assert all(torch.allclose(ema[k], expected[k], atol=1e-6) for k in expected)
    assert not all(torch.equal(ema[k], snapshots[-1][k]) for k in expected)  # an average, not the last weights
    # the average is what is evaluated and exported; the trained weights' numbers are logged beside it
    exported = unwrap_state_dict(load_file(tmp_path / "model-timm.safetensors"))
    assert all(torch.equal(exported[k], ema[k]) for k in exported)
    evals = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "top1" in r]
    assert len(evals) == 2 and all("live_top1" in r and "live_eval_loss" in r for r in evals)
    assert out["eval_loss"] != out["live_eval_loss"]
    # the run's last checkpoint measured again: its trained weights (live_*), or with model.ema=true its average
    from openmae.engine.evaluate import EvaluateConfig, run_evaluate

    data = [f"data.root={datasets}", "data.name=cifar10", "data.max_eval_samples=32", "data.num_workers=0"]
    last = sorted(tmp_path.glob("checkpoint-*.pth"))[-1]
    for ema_on, prefix in (("false", "live_"), ("true", "")):
        again = run_evaluate(load_config(EvaluateConfig, overrides=[f"evaluate.init={last}", *data,
                                                                    f"model.ema={ema_on}"]))
        assert again["eval_loss"] == pytest.approx(out[f"{prefix}eval_loss"], rel=1e-6), ema_on


def test_ema_warmup_follows_timm_schedule(tmp_path, datasets):
    task = FinetuneTask(tiny_finetune(tmp_path, datasets, "finetune.model_ema=true", "finetune.model_ema_decay=0.99"),
                        torch.device("cpu"))
    assert task.ema.get_decay(1) == 0.0
    assert task.ema.get_decay(11) == pytest.approx(1 - 11 ** -0.75)
    assert task.ema.get_decay(100_000) == 0.99


def test_ema_resume_is_bit_exact(tmp_path, datasets):
    ema = ("finetune.model_ema=true", "finetune.model_ema_decay=0.8")
    full = finetune(tiny_finetune(tmp_path / "full", datasets, *ema))
    assert finetune(tiny_finetune(tmp_path / "cut", datasets, *ema, "train.halt_after_steps=6"))["halted"]
    resumed = finetune(tiny_finetune(tmp_path / "cut", datasets, *ema, "train.resume=auto"))
    a, b = (unwrap_state_dict(load_file(tmp_path / d / "model-timm.safetensors")) for d in ("full", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (full["top1"], full["eval_loss"]) == (resumed["top1"], resumed["eval_loss"])


def test_ema_run_refuses_a_checkpoint_without_the_average(tmp_path, datasets):
    assert finetune(tiny_finetune(tmp_path, datasets, "train.halt_after_steps=2"))["halted"]
    with pytest.raises(CheckpointError, match="no EMA weights.*model_ema=true"):
        finetune(tiny_finetune(tmp_path, datasets, "train.resume=auto", "finetune.model_ema=true"))


@pytest.mark.parametrize("bad, match", [("finetune.model_ema_decay=1.0", "model_ema_decay"),
                                        ("train.distributed=fsdp", "model_ema")])
def test_ema_settings_are_checked(bad, match):
    with pytest.raises(ConfigError, match=match):
        load_config(FinetuneConfig, overrides=["data.name=cifar10", "finetune.model_ema=true", bad])


def test_checkpoint_checksum_covers_the_average(tmp_path, datasets):
    """A changed EMA tensor in a checkpoint fails its checksum like a changed model tensor."""
    assert finetune(tiny_finetune(tmp_path, datasets, "finetune.model_ema=true", "train.halt_after_steps=2"))["halted"]
    (path,) = CheckpointManager(tmp_path).list()
    state = CheckpointManager.load(path)
    assert state["task_state"]["ema"]
    key = next(iter(state["task_state"]["ema"]))
    state["task_state"]["ema"][key] = state["task_state"]["ema"][key] + 1
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="fails its checksum"):
        CheckpointManager.load(path)


def test_resumed_finetuning_does_not_read_init_and_is_bit_exact(tmp_path, datasets):
    """finetune.init is read by a new run only: a resumed one takes the architecture (model.name=auto) and every
    weight from its checkpoint, so it finishes after the init file is gone, equal to the uninterrupted run."""
    encoder = openmae.create_model("mae_vit_debug_patch4_32")
    init = tmp_path / "init.pth"
    torch.save({"model": encoder.state_dict(), "model_config": encoder.cfg.to_dict()}, init)
    auto = ("model.name=auto", f"finetune.init={init}", "finetune.model_ema=true", "finetune.model_ema_decay=0.8")
    full = finetune(tiny_finetune(tmp_path / "full", datasets, *auto))
    assert finetune(tiny_finetune(tmp_path / "cut", datasets, *auto, "train.halt_after_steps=6"))["halted"]
    init.unlink()
    resumed = finetune(tiny_finetune(tmp_path / "cut", datasets, *auto, "train.resume=auto"))
    a, b = (unwrap_state_dict(load_file(tmp_path / d / "model-timm.safetensors")) for d in ("full", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (full["top1"], full["eval_loss"]) == (resumed["top1"], resumed["eval_loss"])


def test_resuming_another_tasks_checkpoint_is_refused(tmp_path, datasets):
    """Fine-tuning with resume=auto in a folder that holds a pretraining run (same architecture, so the model
    check alone would pass) names both tasks instead of failing on state-dict keys."""
    from helpers import tiny_pretrain

    from openmae.engine.pretrain import pretrain

    pretrain(tiny_pretrain(tmp_path, datasets, "train.epochs=1"))
    cfg = tiny_finetune(tmp_path, datasets, "model.name=auto", f"finetune.init={tmp_path / 'model-last.pth'}",
                        "train.resume=auto")
    with pytest.raises(CheckpointError, match="written by `openmae pretrain`, but this run is `openmae finetune`"):
        finetune(cfg)


def test_log_says_when_model_best_is_chosen_on_the_eval_split(tmp_path, datasets, caplog):
    with caplog.at_level("INFO", logger="openmae.finetune"):
        FinetuneTask(tiny_finetune(tmp_path, datasets), torch.device("cpu"))
    assert "evaluating on the 'test' split: model-best.pth is its best epoch" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="openmae.finetune"):
        FinetuneTask(tiny_finetune(tmp_path, datasets, "data.holdout=0.25"), torch.device("cpu"))
    assert "model-best.pth" not in caplog.text


def test_held_out_images_choose_model_best_and_the_test_split_is_reported_beside(tmp_path, datasets):
    """data.holdout + data.report_eval_split: each evaluation reads the held-out training images (top1, which
    model-best.pth is chosen on) and the real test split (test_top1); both equal a direct evaluation of the kept
    weights on those images, and best_test_top1 is the test top-1 of the epoch chosen on held-out images."""
    from openmae.data.build import eval_batches, source_for
    from openmae.engine.classifier import evaluate
    from openmae.models.vit import create_classifier

    cfg = tiny_finetune(tmp_path, datasets, "data.holdout=0.25", "data.report_eval_split=true", "train.epochs=3")
    finetune(cfg)
    evals = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "top1" in r]
    assert [r["epoch"] for r in evals] == [1, 2, 3] and all("test_top1" in r for r in evals)
    chosen = max(evals, key=lambda r: r["top1"])  # the first of equal tops, as the keeper (strictly better only)
    assert evals[-1]["best_epoch"] == chosen["epoch"] and evals[-1]["best_test_top1"] == chosen["test_top1"]
    best = load_file(tmp_path / "model-best.pth")
    assert best["epoch"] == chosen["epoch"]
    model = create_classifier(openmae.MAEConfig(**best["model_config"]), best["num_classes"], "avg")
    model.load_state_dict(best["model"])
    d = cfg.data
    held, test = source_for(d, "test", 3, 32), source_for(d, "test", 3, 32, holdout=False)
    assert "/cifar10/train/" in held.describe(0) and all("/cifar10/test/" in test.describe(i) for i in range(32))
    for source, key in ((held, "top1"), (test, "test_top1")):
        top1 = evaluate(model, eval_batches(d, "test", (32, 32), 3, 256, source=source), torch.device("cpu"))["top1"]
        assert top1 == pytest.approx(best["metrics"][key], abs=1e-9)


def test_resumed_run_keeps_the_best_epochs_record(tmp_path, datasets, monkeypatch):
    """model-best.pth's record travels in checkpoints: after a resume, an epoch worse than one before the halt
    does not replace model-best.pth (scripted top-1: 50 after epoch 1, 40 after epoch 2)."""
    scores = iter([50.0, 40.0])
    monkeypatch.setattr(FinetuneTask, "evaluate", lambda self, info=None: {"top1": next(scores), "top5": 100.0, "eval_loss": 1.0})
    assert finetune(tiny_finetune(tmp_path, datasets, "train.halt_after_steps=4"))["halted"]  # end of epoch 1
    out = finetune(tiny_finetune(tmp_path, datasets, "train.resume=auto"))
    assert (out["top1"], out["best_top1"], out["best_epoch"]) == (40.0, 50.0, 1)
    assert load_file(tmp_path / "model-best.pth")["epoch"] == 1


def test_select_by_chooses_model_best_by_balanced_accuracy_and_a_resume_may_change_it(tmp_path, datasets, monkeypatch,
                                                                                       caplog):
    """finetune.select_by: on imbalanced classes top-1 follows the largest class, so model-best.pth can be chosen by
    balanced accuracy or macro F1 instead (scripted numbers where they disagree with top-1). A run resumed with
    another choice judges the best epoch so far by its own number of that measure; records written before the
    choice (top-1 alone) still load."""
    from openmae.engine.classifier import BestKeeper

    def scripted(rows):
        it = iter(rows)
        monkeypatch.setattr(FinetuneTask, "evaluate", lambda self, info=None: {
            **dict(zip(("top1", "balanced_accuracy"), next(it))), "top5": 100.0, "eval_loss": 1.0, "macro_f1": 0.0})

    rows = [(60.0, 40.0), (50.0, 55.0), (55.0, 45.0)]  # (top-1, balanced accuracy) after epochs 1, 2, 3
    for select_by, epoch in (("top1", 1), ("balanced_accuracy", 2)):
        scripted(rows)
        out = finetune(tiny_finetune(tmp_path / select_by, datasets, "train.epochs=3", f"finetune.select_by={select_by}"))
        assert out["best_epoch"] == epoch and load_file(tmp_path / select_by / "model-best.pth")["epoch"] == epoch
        assert out["best_top1"] == rows[epoch - 1][0]
    assert out["best_balanced_accuracy"] == 55.0

    scripted(rows)  # top-1 until the halt after epoch 1, then balanced accuracy: epoch 2's 55 beats epoch 1's 40
    assert finetune(tiny_finetune(tmp_path / "changed", datasets, "train.epochs=3", "train.halt_after_steps=4"))["halted"]
    with caplog.at_level("INFO", logger="openmae.classifier"):
        out = finetune(tiny_finetune(tmp_path / "changed", datasets, "train.epochs=3", "train.resume=auto",
                                     "finetune.select_by=balanced_accuracy"))
    assert out["best_epoch"] == 2 and "best epoch so far (1) was chosen by top-1; from now on by balanced accuracy, " \
                                      "which it measured 40.00" in caplog.text
    assert "epoch 3: top-1 55.00 top-5 100.00 balanced accuracy 45.00 (best balanced accuracy 55.00, epoch 2)" \
           in caplog.text  # the measure it chooses by, named

    keeper = BestKeeper(tmp_path, {}, {})
    keeper.load_state({"best": {"top1": 50.0, "epoch": 3, "metrics": {"top1": 50.0}}})  # a record of before
    assert (keeper.best, keeper.epoch) == (50.0, 3)
    nan = BestKeeper(tmp_path, {}, {}, select_by="roc_auc")  # one class in the split: no AUC, the first epoch kept
    nan.update({}, {"roc_auc": float("nan")}, 1, False, write=False)
    nan.update({}, {"roc_auc": float("nan")}, 2, False, write=False)
    assert nan.epoch == 1
    with pytest.raises(ValueError, match=r"select_by=roc_auc: the evaluation did not measure it \(ROC-AUC is "
                                         r"measured while the evaluation's images times its classes stay within"):
        BestKeeper(tmp_path, {}, {}, select_by="roc_auc").update({}, {"top1": 1.0}, 1, False, write=False)

    monkeypatch.undo()  # a real evaluation measures ROC-AUC (ten classes), and chooses by it
    out = finetune(tiny_finetune(tmp_path / "auc", datasets, "train.epochs=1", "finetune.select_by=roc_auc"))
    assert 0 <= out["roc_auc"] <= 100 and out["best_roc_auc"] == out["roc_auc"] and out["best_epoch"] == 1
    with pytest.raises(ConfigError, match="finetune.select_by"):
        tiny_finetune(tmp_path, datasets, "finetune.select_by=accuracy")


def test_finetune_shift_reaches_the_training_images(tmp_path, datasets):
    """finetune.shift / shift_mode from the command line end up in the training loader's transform."""
    from torchvision.transforms import v2 as T

    from openmae.engine.distributed import DistInfo

    task = FinetuneTask(tiny_finetune(tmp_path, datasets, "finetune.shift=3", "finetune.shift_mode=edge"),
                        torch.device("cpu"))
    dataset, _ = task.train_data(DistInfo())
    crops = [t for t in dataset.transform.transforms if isinstance(t, T.RandomCrop)]
    assert len(crops) == 1 and crops[0].padding == [3, 3, 3, 3] and crops[0].padding_mode == "edge"
    plain = FinetuneTask(tiny_finetune(tmp_path, datasets), torch.device("cpu"))
    dataset, _ = plain.train_data(DistInfo())
    assert not any(isinstance(t, T.RandomCrop) for t in dataset.transform.transforms)
    with pytest.raises(ConfigError, match="finetune.shift.*32x32"):  # refused before the classifier is built
        FinetuneTask(tiny_finetune(tmp_path, datasets, "finetune.shift=32"), torch.device("cpu"))


def test_mixup_runs_with_one_seed_are_equal_whatever_numpy_held_before(tmp_path, datasets):
    """timm's Mixup draws its mixing ratio and its mixup-or-cutmix switch from numpy's global generator in the
    training process: a run seeds it from train.seed, so two fresh runs with one seed give the same weights even
    when numpy's state differed before (as it does between two processes)."""
    mixing = ("finetune.mixup=0.8", "finetune.cutmix=1.0", "train.epochs=1")
    weights = []
    for i, before in enumerate((1, 2)):
        np.random.seed(before)
        finetune(tiny_finetune(tmp_path / f"run{i}", datasets, *mixing))
        weights.append(unwrap_state_dict(load_file(tmp_path / f"run{i}" / "model-timm.safetensors")))
    a, b = weights
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_stop_during_validation_saves_before_it_and_the_resumed_run_ends_as_an_uninterrupted_one(tmp_path, datasets,
                                                                                                  monkeypatch):
    """SIGTERM as the last epoch's validation starts: the validation is cut short, the run saves as at the epoch's
    last step (model-best.pth and the exported weights not yet written for that epoch) and stops; resumed, it
    validates that epoch and ends with the uninterrupted run's files and log."""
    import os
    import signal

    import openmae.engine.finetune as finetune_module
    from openmae.engine.run_status import format_status, run_status

    finetune(tiny_finetune(tmp_path / "full", datasets))
    real, calls = finetune_module.eval_batches, {"n": 0}

    def signalling(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the validation after epoch 2, the last
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(finetune_module, "eval_batches", signalling)
        assert finetune(tiny_finetune(tmp_path / "cut", datasets))["stopped_by"] == "SIGTERM"
    assert not (tmp_path / "cut" / "model-timm.safetensors").exists()
    assert load_file(tmp_path / "cut" / "model-best.pth")["epoch"] == 1
    state = CheckpointManager.load(CheckpointManager(tmp_path / "cut").list()[-1])
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (1, 4, 8)
    # every step was logged, but the run is not finished: `openmae info` says how it stopped (it said "finished")
    status = run_status(tmp_path / "cut")
    assert status["state"] == "stopped" and "continue it: openmae finetune" in format_status(status)
    assert ", not running, stopped by SIGTERM during the evaluation after epoch 2 (step 8)" in format_status(status)
    resumed = finetune(tiny_finetune(tmp_path / "cut", datasets, "train.resume=auto"))
    assert run_status(tmp_path / "cut")["state"] == "finished" and not (tmp_path / "cut" / "stopped.json").exists()
    a, b = (load_file(tmp_path / d / "model-timm.safetensors")["model"] for d in ("full", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    best = [load_file(tmp_path / d / "model-best.pth") for d in ("full", "cut")]
    assert (best[0]["epoch"], best[0]["metrics"]) == (best[1]["epoch"], best[1]["metrics"])
    rows = lambda d: [{k: v for k, v in r.items() if k not in ("time", "images_per_s")}  # noqa: E731
                      for r in read_metrics(d / "metrics.jsonl")]
    assert rows(tmp_path / "full") == rows(tmp_path / "cut") and resumed["best_epoch"] == best[0]["epoch"]


def test_knn_and_cached_probes_read_a_classifier_fine_tuned_with_average_pooling(tmp_path, datasets):
    """A classifier fine-tuned with average pooling has no final norm: its features are fc_norm of the mean patch
    token, as its head reads them (timm's ``forward_head(..., pre_logits=True)``). kNN and cached probes read those
    (they refused the file before); other poolings, several blocks and online probes are refused, saying why."""
    import re

    from openmae.config import load_config
    from openmae.data.build import eval_batches, source_for
    from openmae.data.loader import Batch
    from openmae.engine.config import ModelSection
    from openmae.engine.evaluate import load_classifier
    from openmae.engine.knn_eval import knn_eval, load_encoder_model
    from openmae.engine.linprobe import LinprobeConfig, LinprobeTask
    from openmae.engine.task_config import KnnConfig
    from openmae.eval.features import extract_features

    finetune(tiny_finetune(tmp_path / "ft", datasets, "train.epochs=1"))
    best = str(tmp_path / "ft" / "model-best.pth")
    encoder, cfg = load_encoder_model(ModelSection(name="auto"), best)
    classifier, _ = load_classifier(best)
    images = torch.randn(4, 3, 32, 32)
    batch = Batch(images, torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long), 0)
    feats, _ = extract_features(encoder, [batch], torch.device("cpu"), "mean")
    with torch.no_grad():
        want = classifier.eval().forward_head(classifier.forward_features(images), pre_logits=True)
    torch.testing.assert_close(feats, want, rtol=1e-5, atol=1e-6)
    for pooling, blocks in (("cls", 1), ("cls+mean", 1), ("mean", 2)):
        with pytest.raises(ValueError, match=rf"pooling={re.escape(pooling)}, last_blocks={blocks}: a classifier "
                                             r"fine-tuned with average pooling has one feature, .* set pooling=mean"):
            extract_features(encoder, [batch], torch.device("cpu"), pooling, last_blocks=blocks)

    data = [f"data.root={datasets}", "data.name=cifar10", "data.max_samples=64", "data.max_eval_samples=32",
            "data.num_workers=0"]
    knn = knn_eval(load_config(KnnConfig, overrides=[*data, f"knn.init={best}", "knn.pooling=mean", "knn.k=5"]))
    assert knn["eval_samples"] == 32 and 0 <= knn["knn_top1"] <= 100
    probe = load_config(LinprobeConfig, overrides=[
        *data, f"linprobe.init={best}", "linprobe.mode=cached", "linprobe.pooling=mean", "train.epochs=1",
        "train.warmup_epochs=0", "train.batch_size=16", "train.progress=false", "train.tensorboard=false",
        f"train.output_dir={tmp_path / 'probe'}"])
    task = LinprobeTask(probe, torch.device("cpu"))
    d = probe.data
    source = source_for(d, d.eval_split, 3, d.max_eval_samples)
    want, _ = extract_features(encoder, eval_batches(d, d.eval_split, cfg.img_size, 3, 16, source=source),
                               torch.device("cpu"), "mean")
    torch.testing.assert_close(task.eval_feats[0], want, rtol=1e-5, atol=1e-6)
    probe.linprobe.mode, probe.linprobe.feature_cache = "online", ""
    with pytest.raises(ValueError, match=r"is a classifier fine-tuned with average pooling: probe its features cached"):
        LinprobeTask(probe, torch.device("cpu"))
