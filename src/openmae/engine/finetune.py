"""Fine-tuning task: the whole ViT, layer-wise lr decay, RandAugment / mixup / cutmix / random erasing /
label smoothing (timm's implementations), global average pooling + fc_norm."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from openmae.config import require
from openmae.data.build import eval_batches, split_sources, train_dataset
from openmae.data.config import DataConfig
from openmae.data.datasets import stats_for
from openmae.data.loader import Batch
from openmae.data.transforms import finetune_transform
from openmae.engine.classifier import (
    BestKeeper,
    evaluate,
    evaluate_after_epoch,
    labels_and_images,
    num_classes_of,
    resolve_encoder,
)
from openmae.engine.config import ModelSection, TrainConfig
from openmae.engine.distributed import DistInfo
from openmae.engine.loop import Run, StepOutput, autocast_dtype, launch
from openmae.engine.optim import param_groups
from openmae.models.attention import attention_kernels
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
        require(self.num_classes >= 0, "finetune.num_classes", self.num_classes, ">= 0 (0 = from the dataset)")
        require(self.eval_every_epochs >= 1, "finetune.eval_every_epochs", self.eval_every_epochs, ">= 1")


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


class FinetuneTask:
    name = "finetune"

    def __init__(self, cfg: FinetuneConfig, device: torch.device) -> None:
        self.cfg = cfg
        f = cfg.finetune
        mae_cfg, sd, old_grid = resolve_encoder(cfg.model, f.init)
        self.mae_cfg = mae_cfg
        self.model_config = mae_cfg.to_dict()
        self.train_source, self.eval_source = split_sources(cfg.data, mae_cfg.in_chans)
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
        self.best = BestKeeper(Path(cfg.train.output_dir), self.model_config,
                               {"num_classes": self.num_classes, "global_pool": f.global_pool})

    def shard_blocks(self) -> list[nn.Module]:
        return list(self.model.blocks)

    def param_groups(self, train: TrainConfig) -> list[dict]:
        return param_groups(self.model, train.weight_decay, self.cfg.finetune.layer_decay, self.mae_cfg.depth)

    def train_data(self, info: DistInfo):
        f, d, m = self.cfg.finetune, self.cfg.data, self.mae_cfg
        mean, std = stats_for(d, m.in_chans)
        transform = finetune_transform(d, m.img_size, mean, std, f.auto_augment, f.reprob, f.color_jitter)
        return train_dataset(d, m.img_size, m.in_chans, self.cfg.train.batch_size, self.cfg.train.seed,
                             info.rank, info.world_size, transform=transform, source=self.train_source)

    def forward(self, model: nn.Module, batch: Batch, device: torch.device) -> StepOutput:
        images, labels = labels_and_images(batch, device)
        targets = labels
        if self.mixup is not None:
            images, targets = self.mixup(images, labels)
        grid = self.mae_cfg.grid
        with attention_kernels(images.device, grid[0] * grid[1] + 1, images.dtype):  # CPU bf16: math kernel if short
            logits = model(images)
        return StepOutput(self.criterion(logits.float(), targets))

    def evaluate(self) -> dict[str, float]:
        d, m = self.cfg.data, self.mae_cfg
        device = next(self.model.parameters()).device
        batches = eval_batches(d, d.eval_split, m.img_size, m.in_chans, self.cfg.finetune.eval_batch_size,
                               source=self.eval_source)
        return evaluate(self.model, batches, device, self.amp_dtype)

    def after_epoch(self, run: Run, epoch: int) -> dict[str, Any]:
        return evaluate_after_epoch(run, epoch, self.cfg.finetune.eval_every_epochs, self.model, self.evaluate, self.best)

def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune a ViT classifier from a pretrained (or random) encoder as configured."""
    return launch(lambda info: FinetuneTask(cfg, info.device), cfg)
