"""What fine-tuning and linear probing share: evaluating top-1/top-5, keeping the best weights and exporting them
in timm's layout."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from openmae.convert.files import save_file, weights_metadata
from openmae.data.config import DataConfig
from openmae.data.loader import Batch, batches_of
from openmae.engine.distributed import wait_for_main
from openmae.engine.loop import Run
from openmae.models.vit import fold_bn_head

log = logging.getLogger("openmae.classifier")


@torch.no_grad()
def evaluate(model: nn.Module, batches, device: torch.device, amp_dtype: torch.dtype | None = None,
             confusion: bool = False, flip: bool = False) -> dict[str, Any]:
    """Top-1, top-5 (in percent) and mean cross-entropy over every batch; with ``confusion``, also the confusion
    matrix as ``confusion`` (a list of rows: true class, columns: predicted class). ``flip``: test-time
    augmentation, each image's class probabilities averaged with its horizontal mirror's (ranks and cross-entropy
    are then those of the averaged probabilities)."""
    was_training = model.training
    model.eval()
    correct1 = correct5 = total = 0
    loss_sum = 0.0
    counts: torch.Tensor | None = None
    with batches_of(batches) as each:
        for batch in each:
            images, labels = batch.images.to(device, non_blocking=True), batch.labels.to(device)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = model(images).float()  # (B, classes)
                if flip:  # log of the mean of the two softmaxes: a log-probability, so cross_entropy stays its NLL
                    mirrored = model(images.flip(-1)).float()
                    logits = (torch.logsumexp(torch.stack([logits.log_softmax(1), mirrored.log_softmax(1)]), 0)
                              - math.log(2))
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            correct1 += (top[:, 0] == labels).sum().item()
            correct5 += (top == labels[:, None]).any(1).sum().item()
            total += labels.numel()
            if confusion:
                n = logits.shape[1]
                pairs = torch.bincount((labels * n + top[:, 0]).cpu(), minlength=n * n).view(n, n)
                counts = pairs if counts is None else counts + pairs
    model.train(was_training)
    out: dict[str, Any] = {"top1": 100.0 * correct1 / total, "top5": 100.0 * correct5 / total,
                           "eval_loss": loss_sum / total}
    if confusion:
        out["confusion"] = counts.tolist() if counts is not None else []
    return out


def num_classes_of(configured: int, classes: list[str], labels_max: int | None = None) -> int:
    if configured:
        return configured
    if classes:
        return len(classes)
    if labels_max is not None:
        return labels_max + 1
    raise ValueError("the dataset has no class names; set num_classes")


def report_prefix(data: DataConfig) -> str:
    """The prefix of the metrics measured on ``data.eval_split`` itself beside the held-out images
    (``data.report_eval_split``), e.g. ``test_``; empty when there are none."""
    return f"{data.eval_split}_" if data.report_eval_split else ""


class BestKeeper:
    """Writes ``model-best.pth`` when the top-1 improves and ``model-timm.safetensors`` (timm keys) at the end.

    Its record (the best epoch and its metrics) travels in checkpoints (``state`` / ``load_state``), so that a
    resumed run does not replace ``model-best.pth`` with a worse epoch. ``report``: the prefix of metrics from the
    evaluation split measured beside held-out images (``report_prefix``); they are kept and logged, never chosen on.
    """

    def __init__(self, run_dir: Path, model_config: dict[str, Any], extra: dict[str, Any], report: str = "") -> None:
        self.run_dir, self.model_config, self.extra, self.report = run_dir, model_config, extra, report
        self.best = float("-inf")
        self.epoch = 0
        self.metrics: dict[str, float] = {}

    def state(self) -> dict[str, Any]:
        """Its part of a checkpoint's task_state."""
        return {"best": {"top1": self.best, "epoch": self.epoch, "metrics": dict(self.metrics)}}

    def load_state(self, task_state: dict[str, Any]) -> None:
        """From a checkpoint's task_state; one written before the record travelled has none, and the record
        starts afresh."""
        if "best" in task_state:
            best = task_state["best"]
            self.best, self.epoch, self.metrics = float(best["top1"]), int(best["epoch"]), dict(best["metrics"])

    def update(self, model: nn.Module, metrics: dict[str, float], epoch: int, final: bool) -> dict[str, float]:
        sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        if metrics["top1"] > self.best:
            self.best, self.epoch, self.metrics = metrics["top1"], epoch, dict(metrics)
            save_file({"model": sd, "model_config": self.model_config, "epoch": epoch, "metrics": metrics,
                       **self.extra}, self.run_dir / "model-best.pth")
        if final:
            # timm reads the tensors (a probe's BatchNorm head folded into its Linear); openmae also the architecture
            # (head counts) and normalisation in the metadata
            save_file(fold_bn_head({k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}),
                      self.run_dir / "model-timm.safetensors",
                      metadata=weights_metadata(self.model_config, self.extra.get("normalization")))
            log.info("exported the final classifier in timm layout to %s", self.run_dir / "model-timm.safetensors")
        out = {**metrics, "best_top1": self.best, "best_epoch": self.epoch}
        if self.report:
            # nan: the best epoch was evaluated before data.report_eval_split was turned on (a resumed run)
            out[f"best_{self.report}top1"] = self.metrics.get(f"{self.report}top1", float("nan"))
        return out


def evaluate_after_epoch(run: Run, epoch: int, every: int, model: nn.Module, evaluate_fn: Callable[[], dict[str, float]],
                         best: BestKeeper, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rank 0 evaluates every ``every`` epochs and at the end, keeps the best weights; all ranks wait."""
    final = epoch == run.train.epochs
    out: dict[str, Any] = {}
    if run.info.is_main and (epoch % every == 0 or final):
        out = {**best.update(model, evaluate_fn(), epoch, final), **(extra or {})}
        if best.report:
            split = best.report[:-1]
            log.info("epoch %d: held-out top-1 %.2f top-5 %.2f, %s top-1 %.2f (best held-out %.2f at epoch %d, whose "
                     "%s top-1 is %.2f)", epoch, out["top1"], out["top5"], split, out[f"{best.report}top1"],
                     out["best_top1"], out["best_epoch"], split, out[f"best_{best.report}top1"])
        else:
            log.info("epoch %d: top-1 %.2f top-5 %.2f (best %.2f, epoch %d)", epoch, out["top1"], out["top5"],
                     out["best_top1"], out["best_epoch"])
    wait_for_main(run.info)
    return out


def labels_and_images(batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return batch.images.to(device, non_blocking=True), batch.labels.to(device, non_blocking=True)
