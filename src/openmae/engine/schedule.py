"""Learning-rate schedule of the official code: per-iteration linear warmup, then half-cycle cosine."""

from __future__ import annotations

import math


def lr_at(epoch: float, base_lr: float, min_lr: float, warmup_epochs: float, epochs: int) -> float:
    """lr at fractional ``epoch`` (= epoch + iteration / iterations per epoch)."""
    if epoch < warmup_epochs:
        return base_lr * epoch / warmup_epochs
    progress = (epoch - warmup_epochs) / max(epochs - warmup_epochs, 1e-12)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def effective_lr(blr: float, lr: float | None, batch_size: int, accum_steps: int, world_size: int) -> float:
    """Absolute lr: ``lr`` if given, else blr x effective batch / 256 (the paper's scaling rule)."""
    return lr if lr is not None else blr * batch_size * accum_steps * world_size / 256
