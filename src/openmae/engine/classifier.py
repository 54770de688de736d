"""What fine-tuning and linear probing share: evaluating top-1/top-5, keeping the best weights and exporting them
in timm's layout."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from openmae.convert.files import save_file
from openmae.data.loader import Batch
from openmae.engine.distributed import barrier
from openmae.engine.loop import Run

log = logging.getLogger("openmae.classifier")


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
