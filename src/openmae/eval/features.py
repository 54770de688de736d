"""Frozen-encoder features for kNN and cached linear probing."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from openmae.data.loader import Batch

POOLING = ("cls", "mean")


def pool(tokens: torch.Tensor, pooling: str) -> torch.Tensor:
    """(N, 1 + L, D) encoder output -> (N, D): the cls token or the mean of the patch tokens."""
    if pooling == "cls":
        return tokens[:, 0]
    if pooling == "mean":
        return tokens[:, 1:].mean(dim=1)
    raise ValueError(f"pooling={pooling!r}; choose one of {POOLING}")


@torch.no_grad()
def extract_features(encoder: nn.Module, batches: Iterable[Batch], device: torch.device, pooling: str = "cls",
                     amp_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N, D) float32 on the CPU and labels (N,) for every batch; ``encoder.forward_features``."""
    was_training = encoder.training
    encoder.eval()
    feats, labels = [], []
    for batch in batches:
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            tokens = encoder.forward_features(batch.images.to(device, non_blocking=True))
        feats.append(pool(tokens, pooling).float().cpu())
        labels.append(batch.labels)
    encoder.train(was_training)
    return torch.cat(feats), torch.cat(labels)
