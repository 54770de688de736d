"""What fine-tuning and linear probing share: building the classifier from a pretrained encoder (the
resolution of architecture and weights from a checkpoint also serves pretrain.init),
evaluating top-1/top-5, keeping the best weights and exporting them in timm's layout."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from openmae.convert.checkpoints import infer_config, to_openmae_keys
from openmae.convert.files import load_file, save_file, unwrap_state_dict
from openmae.data.loader import Batch
from openmae.engine.config import ModelSection
from openmae.engine.distributed import barrier
from openmae.engine.loop import Run
from openmae.models.mae import MAEConfig

log = logging.getLogger("openmae.classifier")


def resolve_encoder(model: ModelSection, init: str) -> tuple[MAEConfig, dict[str, torch.Tensor] | None,
                                                            tuple[int, int] | None]:
    """Encoder config, its weights (None for random init) and the grid the weights were trained at.

    ``model.name=auto`` takes the architecture from ``init`` (stored config, else inferred from shapes);
    overrides such as ``model.img_size`` still apply (the position table is then interpolated).
    """
    if not init:
        if model.name == "auto":
            raise ValueError("model.name=auto needs an init checkpoint to read the architecture from; "
                             "set finetune.init / linprobe.init / pretrain.init, or name a model preset")
        return model.resolve(), None, None
    obj = load_file(init)
    sd = to_openmae_keys(unwrap_state_dict(obj))
    stored = MAEConfig(**obj["model_config"]) if isinstance(obj, dict) and isinstance(obj.get("model_config"), dict) \
        else infer_config(sd)
    if model.name == "auto":
        cfg = MAEConfig(**{**stored.to_dict(), **model.overrides()})
    else:
        cfg = model.resolve()
    return cfg, sd, stored.grid


@torch.no_grad()
def evaluate(model: nn.Module, batches, device: torch.device, amp_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Top-1, top-5 (in percent) and mean cross-entropy over every batch."""
    was_training = model.training
    model.eval()
    correct1 = correct5 = total = 0
    loss_sum = 0.0
    for batch in batches:
        images, labels = batch.images.to(device, non_blocking=True), batch.labels.to(device)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(images).float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top[:, 0] == labels).sum().item()
        correct5 += (top == labels[:, None]).any(1).sum().item()
        total += labels.numel()
    model.train(was_training)
    return {"top1": 100.0 * correct1 / total, "top5": 100.0 * correct5 / total, "eval_loss": loss_sum / total}


def num_classes_of(configured: int, classes: list[str], labels_max: int | None = None) -> int:
    if configured:
        return configured
    if classes:
        return len(classes)
    if labels_max is not None:
        return labels_max + 1
    raise ValueError("the dataset has no class names; set num_classes")


class BestKeeper:
    """Writes ``model-best.pth`` when the top-1 improves and ``model-timm.safetensors`` (timm keys) at the end."""

    def __init__(self, run_dir: Path, model_config: dict[str, Any], extra: dict[str, Any]) -> None:
        self.run_dir, self.model_config, self.extra = run_dir, model_config, extra
        self.best = float("-inf")

    def update(self, model: nn.Module, metrics: dict[str, float], epoch: int, final: bool) -> dict[str, float]:
        sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        if metrics["top1"] > self.best:
            self.best = metrics["top1"]
            save_file({"model": sd, "model_config": self.model_config, "epoch": epoch, "metrics": metrics,
                       **self.extra}, self.run_dir / "model-best.pth")
        if final:
            save_file({k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")},
                      self.run_dir / "model-timm.safetensors")
            log.info("exported the final classifier in timm layout to %s", self.run_dir / "model-timm.safetensors")
        return {**metrics, "best_top1": self.best}


def evaluate_after_epoch(run: Run, epoch: int, every: int, model: nn.Module, evaluate_fn: Callable[[], dict[str, float]],
                         best: BestKeeper, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rank 0 evaluates every ``every`` epochs and at the end, keeps the best weights; all ranks wait."""
    final = epoch == run.train.epochs
    out: dict[str, Any] = {}
    if run.info.is_main and (epoch % every == 0 or final):
        out = {**best.update(model, evaluate_fn(), epoch, final), **(extra or {})}
        log.info("epoch %d: top-1 %.2f top-5 %.2f (best %.2f)", epoch, out["top1"], out["top5"], out["best_top1"])
    barrier(run.info)
    return out


def labels_and_images(batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return batch.images.to(device, non_blocking=True), batch.labels.to(device, non_blocking=True)
