"""Class weights and logit adjustment for imbalanced classes (``finetune`` / ``linprobe``.``class_weights``,
``logit_adjustment``): the losses their definitions give, on hand-made logits, and on a long-tailed list through
fine-tuning's and the probes' steps; the combinations that would count the imbalance twice are refused."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from openmae.config import ConfigError, load_config
from openmae.engine.imbalance import ClassBalance
from openmae.engine.task_config import FinetuneConfig, LinprobeConfig


def test_balanced_weights_and_logit_adjustment_are_their_definitions():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)  # 10 images, 3 classes
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 1, 2, 2, 0])
    weighted = ClassBalance(labels, 3, "balanced")
    assert weighted.weight.tolist() == pytest.approx([10 / (3 * 6), 10 / (3 * 3), 10 / (3 * 1)])  # scikit-learn's
    per_image = -logits.log_softmax(1)[torch.arange(5), targets]
    w = weighted.weight.float()[targets]
    assert weighted.loss(logits, targets).item() == pytest.approx((w * per_image).sum().item() / w.sum().item())
    # Menon et al.: cross-entropy of logits + tau log prior
    adjusted = ClassBalance(labels, 3, logit_adjustment=1.5)
    prior = torch.tensor([0.6, 0.3, 0.1])
    want = F.cross_entropy(logits + 1.5 * prior.log(), targets)
    assert adjusted.loss(logits, targets).item() == pytest.approx(want.item(), rel=1e-6)
    # smoothing on class indices, none on soft targets (mixup's come smoothed)
    smooth = ClassBalance(labels, 3, "balanced", smoothing=0.1)
    assert smooth.loss(logits, targets).item() == pytest.approx(
        F.cross_entropy(logits, targets, weight=smooth.weight.float(), label_smoothing=0.1).item())
    soft = torch.softmax(torch.randn(5, 3), 1)
    assert smooth.loss(logits, soft).item() == pytest.approx(
        -(soft * smooth.weight.float() * logits.log_softmax(1)).sum(1).mean().item(), rel=1e-6)
    # several classes an image: each class's positives weighed by its negatives / positives
    rows = np.array([[1, 0], [1, 1], [0, 0], [1, 0]], dtype=np.float32)
    multi = ClassBalance(rows, 2, "balanced")
    assert multi.pos_weight.tolist() == pytest.approx([1 / 3, 3 / 1])
    x, y = torch.randn(4, 2), torch.from_numpy(rows)
    want = -(torch.tensor([1 / 3, 3.0]) * y * F.logsigmoid(x) + (1 - y) * F.logsigmoid(-x)).mean()
    assert multi.loss(x, y).item() == pytest.approx(want.item(), rel=1e-6)
    with pytest.raises(ValueError, match=r"but bird has none; train without them"):
        ClassBalance(labels, 4, "balanced", names=["cat", "dog", "ship", "bird"])
    assert not ClassBalance(labels, 3).active


def test_the_remedies_reach_fine_tuning_and_probes_and_are_refused_together(tmp_path, datasets, caplog):
    import logging

    from test_finetune import tiny_finetune
    from test_labels import long_tailed_list

    from openmae.data.loader import Batch
    from openmae.engine.finetune import FinetuneTask
    from openmae.engine.linprobe import LinprobeTask

    listed, _ = long_tailed_list(tmp_path, datasets)
    data = ["data.name=csv", f"data.path={listed}", "data.max_samples=0"]
    with caplog.at_level(logging.INFO, logger="openmae.classifier"):
        task = FinetuneTask(tiny_finetune(tmp_path / "ft", datasets, *data, "finetune.class_weights=balanced",
                                          "finetune.smoothing=0.1"), torch.device("cpu"))
    assert "classes weighted 0.583 to 2.33 (class_weights=balanced)" in caplog.text  # 14 / (3 x 8), 14 / (3 x 2)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 2])
    logits = task.model(images).float()
    want = F.cross_entropy(logits, labels, weight=torch.tensor([14 / 24, 14 / 12, 14 / 6]), label_smoothing=0.1)
    got = task.forward(task.model, Batch(images, labels, torch.zeros(4, dtype=torch.long), 0), torch.device("cpu"))
    assert got.loss.item() == pytest.approx(want.item(), rel=1e-5)
    probe = load_config(LinprobeConfig, overrides=[
        "model.name=mae_vit_debug_patch4_32", *data, "linprobe.mode=cached", "linprobe.logit_adjustment=1.0",
        "train.epochs=1", "train.warmup_epochs=0", "train.batch_size=4", "train.progress=false",
        "train.tensorboard=false", f"train.output_dir={tmp_path / 'probe'}"])
    probe_task = LinprobeTask(probe, torch.device("cpu"))
    prior = torch.tensor([8 / 14, 4 / 14, 2 / 14])
    feats, labels = probe_task.train_feats[0][:5], probe_task.train_feats[1][:5]
    head_logits = probe_task.model(feats).float()
    got = probe_task.forward(probe_task.model, Batch(feats, labels, labels, 0), torch.device("cpu"))
    assert got.loss.item() == pytest.approx(F.cross_entropy(head_logits + prior.log(), labels).item(), rel=1e-5)

    for section, extra, match in (
            ("finetune", ["data.balance=classes", "finetune.class_weights=balanced"], "data.balance"),
            ("linprobe", ["data.balance=classes", "linprobe.logit_adjustment=1"], "data.balance"),
            ("finetune", ["data.multi_label=true", "finetune.logit_adjustment=1"], "finetune.logit_adjustment"),
            ("linprobe", ["data.multi_label=true", "linprobe.select_by=top1"], "linprobe.select_by"),
            ("finetune", ["finetune.class_weights=inverse"], "finetune.class_weights")):
        with pytest.raises(ConfigError, match=match):
            load_config(FinetuneConfig if section == "finetune" else LinprobeConfig,
                        overrides=["data.name=csv", "data.path=x.csv", *extra])
