"""Frozen-encoder features for kNN and cached linear probing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from openmae.data.loader import Batch, batches_of
from openmae.eval.progress import reported
from openmae.models.config import POOLING


def pooled_width(pooling: str, width: int) -> int:
    """Feature width of ``pool`` for tokens of ``width`` channels."""
    return 2 * width if pooling == "cls+mean" else width


def pool(tokens: torch.Tensor, pooling: str) -> torch.Tensor:
    """(N, 1 + L, D) encoder output -> (N, D): the cls token or the mean of the patch tokens;
    ``cls+mean``: both, concatenated (N, 2 * D)."""
    if pooling == "cls":
        return tokens[:, 0]
    if pooling == "mean":
        return tokens[:, 1:].mean(dim=1)
    if pooling == "cls+mean":
        return torch.cat([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=-1)
    raise ValueError(f"pooling={pooling!r}; choose one of {POOLING}")


def encoder_tokens(encoder: nn.Module, images: torch.Tensor, last_blocks: int = 1) -> torch.Tensor:
    """(N, 1 + L, D * last_blocks): the final-normed tokens of the encoder's last ``last_blocks`` blocks,
    concatenated along the channels, for an openmae ``MaskedAutoencoder`` or a timm ``VisionTransformer``."""
    if last_blocks == 1:
        return encoder.forward_features(images)
    if isinstance(encoder, VisionTransformer):
        depth = len(encoder.blocks)
        if not 1 <= last_blocks <= depth:
            raise ValueError(f"last_blocks={last_blocks}: the encoder has {depth} blocks; choose 1..{depth}")
        outs = encoder.forward_intermediates(images, indices=last_blocks, norm=True, output_fmt="NLC",
                                             intermediates_only=True, return_prefix_tokens=True)
        return torch.cat([torch.cat([prefix, patches], dim=1) for patches, prefix in outs], dim=-1)
    return encoder.forward_features(images, last_blocks=last_blocks)


def pooled_norm(encoder: nn.Module, pooling: str, last_blocks: int) -> nn.Module | None:
    """The ``fc_norm`` of a classifier fine-tuned with average pooling (its tokens have no final norm: its
    features are ``fc_norm`` of their mean, as its head reads them), None for an encoder with a final norm; a
    ValueError for the poolings such a classifier has no features for."""
    fc_norm = getattr(encoder, "fc_norm", None)
    if not isinstance(fc_norm, nn.LayerNorm):
        return None
    if pooling != "mean" or last_blocks != 1:
        raise ValueError(f"pooling={pooling}, last_blocks={last_blocks}: a classifier fine-tuned with average pooling "
                         "has one feature, fc_norm of its last block's mean patch token (no final norm for its cls "
                         "token or earlier blocks); set pooling=mean (knn.pooling / linprobe.pooling) and last_blocks=1")
    return fc_norm


@torch.no_grad()
def extract_features(encoder: nn.Module, batches: Iterable[Batch], device: torch.device, pooling: str = "cls",
                     amp_dtype: torch.dtype | None = None, last_blocks: int = 1, what: str = "features",
                     total: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N, D * last_blocks) float32 on the CPU and labels (N,) for every batch (``encoder_tokens``);
    with ``total`` (the images), how far it came is reported as ``what`` (:func:`openmae.eval.progress.reported`)."""
    fc_norm = pooled_norm(encoder, pooling, last_blocks)
    was_training = encoder.training
    encoder.eval()
    feats, labels = [], []
    with batches_of(batches) as each, contextlib.closing(reported(each, what, total)) as shown:
        for batch in shown:
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                tokens = encoder_tokens(encoder, batch.images.to(device, non_blocking=True), last_blocks)
                pooled = pool(tokens, pooling) if fc_norm is None else fc_norm(pool(tokens, pooling))  # (N, D)
            feats.append(pooled.float().cpu())
            labels.append(batch.labels)
    encoder.train(was_training)
    return torch.cat(feats), torch.cat(labels)
