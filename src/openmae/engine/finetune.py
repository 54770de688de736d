"""Fine-tuning task: the whole ViT, layer-wise lr decay, RandAugment / mixup / cutmix / random erasing /
label smoothing / weight EMA (timm's implementations), global average pooling + fc_norm."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.utils import ModelEmaV3

from openmae.config import require
from openmae.data.build import eval_batches, report_source, split_sources, train_dataset
from openmae.data.config import DataConfig
from openmae.data.datasets import keep_stats, stats_for
from openmae.data.loader import Batch
from openmae.data.normalization import stats_record
from openmae.data.transforms import SHIFT_MODES, check_recipe, check_shift, finetune_transform
from openmae.engine.checkpoint import CheckpointError
from openmae.engine.classifier import (
    BestKeeper,
    evaluate,
    evaluate_after_epoch,
    labels_and_images,
    num_classes_of,
    report_prefix,
)
from openmae.engine.config import ModelSection, TrainConfig
from openmae.engine.distributed import DistInfo
from openmae.engine.loop import Run, StepOutput, autocast_dtype, launch
from openmae.engine.optim import param_groups
from openmae.engine.weights import resolve_encoder
from openmae.models.vit import GLOBAL_POOL, create_classifier, load_encoder

log = logging.getLogger("openmae.finetune")


@dataclass
class FinetuneSection:
    init: str = ""
    num_classes: int = 0
    global_pool: str = "avg"
    drop_path: float = 0.1
    layer_decay: float = 0.75
    smoothing: float = 0.1
    mixup: float = 0.8
    cutmix: float = 1.0
    auto_augment: str = "rand-m9-mstd0.5-inc1"
    reprob: float = 0.25
    # Colour jitter strength when auto_augment is off (timm applies it only then); 0 = none, as the official
    # recipe (which passes None, where timm's own default would be 0.4).
    color_jitter: float = 0.0
    # Random translation by up to this many pixels each way (pad, then crop the image size back), after the crop;
    # shift_mode fills the uncovered border: constant (black), edge or reflect. 0 = none, as the official recipe.
    shift: int = 0
    shift_mode: str = "constant"
    # An exponential moving average of the weights (as DeiT's recipe): when on, the EMA weights are the classifier
    # that is evaluated (top1), kept (model-best.pth) and exported; the trained weights' numbers are logged as
    # live_top1 etc. With the warm-up (timm's), the decay at optimizer step t is min(decay, 1 - (1 + t)^-0.75),
    # so short runs still average over a horizon their length allows.
    model_ema: bool = False
    model_ema_decay: float = 0.9999
    model_ema_warmup: bool = True
    eval_batch_size: int = 256
    eval_every_epochs: int = 1

    def check(self) -> None:
        require(self.global_pool in GLOBAL_POOL, "finetune.global_pool", self.global_pool, f"one of {GLOBAL_POOL}")
        require(0 <= self.drop_path < 1, "finetune.drop_path", self.drop_path, "in [0, 1)")
        require(0 < self.layer_decay <= 1, "finetune.layer_decay", self.layer_decay, "in (0, 1]")
        require(0 <= self.smoothing < 1, "finetune.smoothing", self.smoothing, "in [0, 1)")
        require(self.mixup >= 0 and self.cutmix >= 0, "finetune.mixup/cutmix", (self.mixup, self.cutmix), ">= 0")
        require(0 <= self.reprob <= 1, "finetune.reprob", self.reprob, "in [0, 1]")
        require(self.color_jitter >= 0, "finetune.color_jitter", self.color_jitter, ">= 0 (0 = no colour jitter)")
        require(self.shift >= 0, "finetune.shift", self.shift, ">= 0 pixels (0 = no random translation)")
        require(self.shift_mode in SHIFT_MODES, "finetune.shift_mode", self.shift_mode, f"one of {SHIFT_MODES}")
        require(self.num_classes >= 0, "finetune.num_classes", self.num_classes, ">= 0 (0 = from the dataset)")
        require(self.eval_every_epochs >= 1, "finetune.eval_every_epochs", self.eval_every_epochs, ">= 1")
        require(0 <= self.model_ema_decay < 1, "finetune.model_ema_decay", self.model_ema_decay,
                "in [0, 1) (0.9999 averages over about 10,000 optimizer steps)")


@dataclass
class FinetuneConfig:
    model: ModelSection = field(default_factory=lambda: ModelSection(name="auto"))
    data: DataConfig = field(default_factory=lambda: DataConfig(crop_scale=(0.08, 1.0)))  # timm's / the paper's crop
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=100, warmup_epochs=5, blr=5e-4, betas=(0.9, 0.999), output_dir="runs/finetune", ckpt_every_epochs=10))
    finetune: FinetuneSection = field(default_factory=FinetuneSection)

    def check(self) -> None:
        mixing = self.finetune.mixup > 0 or self.finetune.cutmix > 0
        require(not mixing or self.train.batch_size % 2 == 0, "train.batch_size", self.train.batch_size,
                "even when mixup/cutmix are on")
        require(self.data.name != "folder", "data.name", self.data.name, "a labelled dataset (imagefolder or named)")
        require(not self.data.device_augment, "data.device_augment", self.data.device_augment,
                "false for fine-tuning (its RandAugment / random erasing recipe runs in the loader's workers)")
        check_recipe(self.data.format, self.finetune.auto_augment, self.finetune.color_jitter)
        require(not (self.finetune.model_ema and self.train.distributed == "fsdp"), "finetune.model_ema",
                self.finetune.model_ema, "false with train.distributed=fsdp (the average needs whole weights on "
                "every rank); use ddp")


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
        mixing = f.mixup > 0 or f.cutmix > 0
        self.mixup = Mixup(mixup_alpha=f.mixup, cutmix_alpha=f.cutmix, label_smoothing=f.smoothing,
                           num_classes=self.num_classes) if mixing else None
        self.criterion = SoftTargetCrossEntropy() if mixing else (
            LabelSmoothingCrossEntropy(f.smoothing) if f.smoothing > 0 else nn.CrossEntropyLoss())
        self.amp_dtype = autocast_dtype(cfg.train.precision, device)
        # Built on the run's device from the initial weights (the loop moves the same model there).
        self.ema = ModelEmaV3(self.model.to(device), decay=f.model_ema_decay, use_warmup=f.model_ema_warmup,
                              warmup_power=3 / 4) if f.model_ema else None
        self.best = BestKeeper(Path(cfg.train.output_dir), self.model_config,
                               {"num_classes": self.num_classes, "global_pool": f.global_pool,
                                "normalization": stats_record(cfg.data)},
                               report_prefix(cfg.data))
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
        if self.mixup is not None:
            images, targets = self.mixup(images, labels)
        logits = model(images)
        return StepOutput(self.criterion(logits.float(), targets))

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

    @property
    def classifier(self) -> nn.Module:
        """What is evaluated, kept and exported: the EMA weights when finetune.model_ema is on."""
        return self.ema.module if self.ema is not None else self.model

    def evaluate(self) -> dict[str, float]:
        d, m = self.cfg.data, self.mae_cfg
        device = next(self.model.parameters()).device

        def on(model: nn.Module, source=self.eval_source) -> dict[str, float]:
            return evaluate(model, eval_batches(d, d.eval_split, m.img_size, m.in_chans, self.cfg.finetune.eval_batch_size,
                                                source=source), device, self.amp_dtype)

        metrics = on(self.classifier)
        if self.report_source is not None:
            metrics.update({f"{self.best.report}{k}": v for k, v in on(self.classifier, self.report_source).items()})
        if self.ema is not None:
            metrics.update({f"live_{k}": v for k, v in on(self.model).items()})
        return metrics

    def after_epoch(self, run: Run, epoch: int) -> dict[str, Any]:
        return evaluate_after_epoch(run, epoch, self.cfg.finetune.eval_every_epochs, self.classifier, self.evaluate,
                                    self.best)

def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune a ViT classifier from a pretrained (or random) encoder as configured."""
    return launch(lambda info, resume: FinetuneTask(cfg, info.device, resume.model_config if resume else None), cfg)
