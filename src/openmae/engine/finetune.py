"""Fine-tuning task: the whole ViT (or its last blocks: finetune.tune_blocks), layer-wise lr decay, RandAugment /
mixup / cutmix / random erasing / label smoothing / weight EMA (timm's implementations), global average pooling +
fc_norm."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from timm.data import Mixup
from timm.layers import use_reentrant_ckpt
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.utils import ModelEmaV3

from openmae.data.build import eval_batches, labels_of, report_source, split_sources, train_dataset
from openmae.data.datasets import ImageSource, keep_stats, stats_for
from openmae.data.loader import Batch
from openmae.data.normalization import stats_record
from openmae.data.transforms import check_shift, finetune_transform
from openmae.engine.checkpoint import CheckpointError
from openmae.engine.classifier import (
    BestKeeper,
    data_record,
    evaluate_after_epoch,
    evaluate_share,
    fitted_on_held_out,
    labels_and_images,
    num_classes_of,
    report_prefix,
    say_labels,
)
from openmae.engine.config import TrainConfig, measure_to_select
from openmae.engine.distributed import ONE_PROCESS, DistInfo
from openmae.engine.imbalance import class_balance
from openmae.engine.loop import Run, StepOutput, launch
from openmae.engine.optim import param_groups
from openmae.engine.precision import autocast_dtype
from openmae.engine.row_loss import row_loss
from openmae.engine.task_config import FinetuneConfig
from openmae.engine.train_state import refuse_other_tuning
from openmae.engine.weights import resolve_encoder
from openmae.models.vit import create_classifier, load_encoder, tune_last_blocks

log = logging.getLogger("openmae.finetune")


class FinetuneTask:
    name = "finetune"

    def __init__(self, cfg: FinetuneConfig, device: torch.device, resumed: dict[str, Any] | None = None) -> None:
        """``resumed``: the model config of the checkpoint the run resumes from (then finetune.init is not read)."""
        self.cfg = cfg
        f = cfg.finetune
        mae_cfg, sd, old_grid = resolve_encoder(cfg.model, f.init, resumed, cfg.data)
        self.mae_cfg = mae_cfg
        check_shift(f.shift, mae_cfg.img_size)  # before the classifier is built, not when the loader is
        self.model_config = mae_cfg.to_dict()
        self.train_source, self.eval_source = split_sources(cfg.data, mae_cfg.in_chans)
        self.report_source = report_source(cfg.data, mae_cfg.in_chans)  # the test split beside held-out images
        keep_stats(cfg.data, mae_cfg.in_chans)  # recorded in config.yaml and the checkpoints
        self.num_classes = num_classes_of(f.num_classes, self.train_source.classes)
        self.model = create_classifier(mae_cfg, self.num_classes, f.global_pool, f.drop_path)
        if sd is not None:
            load_encoder(self.model, sd, mae_cfg.grid, old_grid)
            log.info("encoder initialised from %s", f.init)
        # activation checkpointing (model.grad_checkpointing): timm's, non-reentrant, so that the first block trained
        # after frozen ones still gets its gradients (its input needs none)
        self.model.set_grad_checkpointing(mae_cfg.grad_checkpointing)
        trained, total = tune_last_blocks(self.model, f.tune_blocks)
        if mae_cfg.grad_checkpointing and trained < total and use_reentrant_ckpt():
            raise ValueError("model.grad_checkpointing=true with finetune.tune_blocks and timm's reentrant "
                             "checkpointing (TIMM_REENTRANT_CKPT is set): the first trained block would get no "
                             "gradients; unset TIMM_REENTRANT_CKPT, or turn one of the two settings off")
        if trained < total:
            log.info("partial fine-tuning: the last %d of %d blocks, the final norm and the head train (%s of %s "
                     "parameters); the rest stays as initialised", f.tune_blocks, mae_cfg.depth, f"{trained:,}",
                     f"{total:,}")
        mixing = f.mixup > 0 or f.cutmix > 0
        self.mixup = Mixup(mixup_alpha=f.mixup, cutmix_alpha=f.cutmix, label_smoothing=f.smoothing,
                           num_classes=self.num_classes) if mixing else None
        self.multi_label = cfg.data.multi_label  # several classes an image: a yes / no each (binary cross-entropy)
        self.criterion = row_loss if self.multi_label else SoftTargetCrossEntropy() if mixing else (
            LabelSmoothingCrossEntropy(f.smoothing) if f.smoothing > 0 else nn.CrossEntropyLoss())
        # class weights / logit adjustment for imbalanced classes, from the training labels (None: off)
        self.balance = class_balance(lambda: labels_of(self.train_source), self.num_classes, f.class_weights,
                                     f.logit_adjustment, f.smoothing, list(self.train_source.classes))
        self.amp_dtype = autocast_dtype(cfg.train.precision, device)
        # Built on the run's device from the initial weights (the loop moves the same model there).
        self.ema = ModelEmaV3(self.model.to(device), decay=f.model_ema_decay, use_warmup=f.model_ema_warmup,
                              warmup_power=3 / 4) if f.model_ema else None
        self.classes = list(self.train_source.classes)  # the outputs' names, in the files it writes
        self.best = BestKeeper(Path(cfg.train.output_dir), self.model_config,
                               {"num_classes": self.num_classes, "global_pool": f.global_pool,
                                "normalization": stats_record(cfg.data), "classes": self.classes,
                                "multi_label": self.multi_label, **data_record(cfg.data)},
                               report_prefix(cfg.data), measure_to_select(f.select_by, cfg.data.multi_label))
        say_labels(cfg.data.multi_label, self.num_classes, self.best.select_by)
        if not cfg.data.holdout:
            log.info("evaluating on the '%s' split: model-best.pth is its best epoch, chosen on that split; report "
                     "the last epoch, or set data.holdout (with data.report_eval_split=true) to choose on held-out "
                     "training images and report this split beside them", cfg.data.eval_split)

    def shard_blocks(self) -> list[nn.Module]:
        return list(self.model.blocks)

    def param_groups(self, train: TrainConfig) -> list[dict]:
        return param_groups(self.model, train.weight_decay, self.cfg.finetune.layer_decay, self.mae_cfg.depth)

    def train_data(self, info: DistInfo):
        f, d, m = self.cfg.finetune, self.cfg.data, self.mae_cfg
        mean, std = stats_for(d, m.in_chans)
        transform = finetune_transform(d, m.img_size, mean, std, f.auto_augment, f.reprob, f.color_jitter,
                                       f.shift, f.shift_mode)
        return train_dataset(d, m.img_size, m.in_chans, self.cfg.train.batch_size, self.cfg.train.seed,
                             info.rank, info.world_size, transform=transform, source=self.train_source)

    def forward(self, model: nn.Module, batch: Batch, device: torch.device) -> StepOutput:
        images, labels = labels_and_images(batch, device)
        targets = labels
        if self.multi_label:
            # timm's Mixup mixes rows of several classes only from timm 1.0.31 (multi_label=True): its image mixing
            # (batch mode, the mode built above) is taken, and the rows mixed as that release mixes them
            lam = self.mixup._mix_batch(images) if self.mixup is not None else 1.0  # images mixed in place
            targets = mixed_rows(labels, lam, self.cfg.finetune.smoothing)
        elif self.mixup is not None:
            images, targets = self.mixup(images, labels)
        logits = model(images).float()
        return StepOutput(self.criterion(logits, targets) if self.balance is None else self.balance.loss(logits, targets))

    def after_step(self, step: int) -> None:
        if self.ema is not None:
            self.ema.update(self.model, step=step)

    def extra_state(self) -> dict[str, Any]:
        state = self.best.state()
        return {**state, "ema": self.ema.module.state_dict()} if self.ema is not None else state

    def load_extra_state(self, state: dict[str, Any], path: Path) -> None:
        self.best.load_state(state)
        if self.ema is None:
            return
        if "ema" not in state:
            raise CheckpointError(f"{path} has no EMA weights (written with finetune.model_ema=false) but this run "
                                  "has finetune.model_ema=true; resume with the same setting or start a new run")
        self.ema.module.load_state_dict(state["ema"])

    def check_resume(self, state: dict[str, Any], path: Path) -> None:
        """The parameters that train (finetune.tune_blocks) are those whose optimizer state the checkpoint holds."""
        refuse_other_tuning(state, path, "finetune", self.cfg.finetune.tune_blocks)

    @property
    def classifier(self) -> nn.Module:
        """What is evaluated, kept and exported: the EMA weights when finetune.model_ema is on."""
        return self.ema.module if self.ema is not None else self.model

    def evaluate(self, info: DistInfo = ONE_PROCESS) -> dict[str, float]:
        """Top-1 etc. on the evaluation images (each rank of a torchrun job evaluating its part of them)."""
        d, m = self.cfg.data, self.mae_cfg
        device = next(self.model.parameters()).device

        def batches_for(images: ImageSource):
            return eval_batches(d, d.eval_split, m.img_size, m.in_chans, self.cfg.finetune.eval_batch_size,
                                source=images)

        def on(model: nn.Module, source=self.eval_source, fitted=None) -> dict[str, float]:
            return evaluate_share(model, source, batches_for, device, info, self.amp_dtype, fitted=fitted)

        metrics = on(self.classifier)
        if self.report_source is not None:  # also at the temperature (and thresholds) fitted on held-out images
            report = on(self.classifier, self.report_source, fitted_on_held_out(metrics))
            metrics.update({f"{self.best.report}{k}": v for k, v in report.items()})
        if self.ema is not None:
            metrics.update({f"live_{k}": v for k, v in on(self.model).items()})
        return metrics

    def after_epoch(self, run: Run, epoch: int) -> dict[str, Any]:
        return evaluate_after_epoch(run, epoch, self.cfg.finetune.eval_every_epochs, self.classifier, self.evaluate,
                                    self.best)


def mixed_rows(labels: torch.Tensor, lam: float, smoothing: float) -> torch.Tensor:
    """Targets (B, classes) of images of several classes each: rows of 0 / 1 ``labels`` smoothed towards one half
    by ``smoothing``, each image's mixed with its mirror in the batch's (``labels.flip(0)``) by ``lam`` (mixup /
    cutmix pair image i with image B - 1 - i). An unknown label (nan) stays unknown, and so does a label mixed with
    one (what the mixed image shows of that class is unknown); ``lam`` 1 (no mixing) leaves the rows unmixed."""
    rows = labels.float() * (1.0 - smoothing) + 0.5 * smoothing
    return rows if lam == 1.0 else rows * lam + rows.flip(0) * (1.0 - lam)


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune a ViT classifier from a pretrained (or random) encoder as configured."""
    return launch(lambda info, resume: FinetuneTask(cfg, info.device, resume.model_config if resume else None), cfg)
