"""``openmae knn``: weighted kNN accuracy of a (pretrained or random) encoder on a labelled dataset; under torchrun
each rank computes its part (``knn_over_ranks``, which the pretraining's kNN monitor also runs)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from openmae.convert.checkpoints import load_state_dict_into
from openmae.data.build import eval_batches, split_sources
from openmae.data.config import DataConfig
from openmae.data.datasets import ImageSource
from openmae.data.loader import Batch
from openmae.data.ranks import shared_by_ranks
from openmae.engine.config import ModelSection
from openmae.engine.distributed import (
    DistInfo,
    cleanup,
    gather_rows,
    gather_stacked,
    init_distributed,
    part_of,
    same_buffers,
)
from openmae.engine.task_config import KnnConfig
from openmae.engine.weights import resolve_encoder
from openmae.eval.features import extract_features
from openmae.eval.knn import knn_accuracy, standardize
from openmae.models.mae import MAEConfig, MaskedAutoencoder
from openmae.models.vit import create_classifier, load_encoder, pooled_by_fc_norm

log = logging.getLogger("openmae.knn")


def load_encoder_model(model: ModelSection, init: str, seed: int = 0, data: DataConfig | None = None
                       ) -> tuple[nn.Module, MAEConfig]:
    """An MAE whose encoder holds ``init``'s weights (decoder optional), or a random one when ``init`` is empty,
    and its config; a classifier fine-tuned with average pooling (no final norm) comes as timm's classifier pooled
    alike, whose features are its ``fc_norm`` of the mean patch token. ``data`` takes the normalisation ``init``
    records when its own is unset."""
    cfg, sd, old_grid = resolve_encoder(model, init, data=data)
    torch.manual_seed(seed)
    if sd is not None and pooled_by_fc_norm(sd):
        classifier = create_classifier(cfg, 1, "avg", fc_norm=True)  # its head is not read
        load_encoder(classifier, sd, cfg.grid, old_grid)
        log.info("%s is a classifier fine-tuned with average pooling: its features are fc_norm of the mean patch "
                 "token, as its head reads them", init)
        return classifier, cfg
    mae = MaskedAutoencoder(cfg)
    if sd is not None:
        load_state_dict_into(mae, sd)
    return mae, cfg


def _standardized_over_ranks(train: torch.Tensor, test: torch.Tensor, info: DistInfo) -> list[torch.Tensor]:
    """``standardize`` with the mean and std of every rank's training features (two passes, as torch.std)."""
    if not info.enabled:
        return standardize(train, test)
    count = int(gather_stacked(torch.tensor([len(train)]), info).sum())
    mean = gather_stacked(train.sum(0), info).sum(0) / count  # (D,)
    var = gather_stacked(((train - mean) ** 2).sum(0), info).sum(0) / max(count - 1, 1)
    std = var.sqrt().clamp_min(1e-6)
    return [(train - mean) / std, (test - mean) / std]


def knn_over_ranks(model: nn.Module, sources: tuple[ImageSource, ImageSource],
                   batches_for: Callable[[str, ImageSource], Iterable[Batch]], splits: tuple[str, str],
                   device: torch.device, info: DistInfo, pooling: str = "cls", last_blocks: int = 1, k: int = 20,
                   temperature: float = 0.07, standardized: bool = False) -> dict[str, Any]:
    """kNN top-1 (and top-5) of ``model``'s features of the evaluation images (``sources[1]``) against the training
    ones (``sources[0]``), and their counts; ``batches_for(split, images)`` makes the batches of the images given.
    Each rank of a torchrun job computes the features of its part of the images and finds the nearest among its
    part of the training ones (``knn_accuracy``'s ``gather``); every rank returns the result."""
    same_buffers(model, info)  # one encoder measured (an MAE has no statistics of its own: a guard)

    def features(split: str, source: ImageSource) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This rank's part: features (n, D), labels (n,), and which are not the repeats that even the parts."""
        part, keep = part_of(source, info)
        feats, labels = extract_features(model, batches_for(split, part), device, pooling, last_blocks=last_blocks,
                                         what=f"kNN features of the {split} images", total=len(part))
        return feats, labels, torch.from_numpy(keep)

    train_source, eval_source = sources
    train_feats, train_labels, keep = features(splits[0], train_source)
    test_feats, test_labels, _ = features(splits[1], eval_source)
    gather = None
    if info.enabled:
        gather = functools.partial(gather_stacked, info=info)
        train_feats, train_labels = train_feats[keep], train_labels[keep]
        test_feats = gather_rows(test_feats, len(eval_source), info)  # (M, D): every rank all of them
        test_labels = gather_rows(test_labels, len(eval_source), info)
    if test_labels.ndim == 2:  # (N, classes): several classes an image
        num_classes = test_labels.shape[1]
    else:
        top = max(int(train_labels.max()) if len(train_labels) else 0, int(test_labels.max()))
        num_classes = (int(gather(torch.tensor([top])).max()) if gather else top) + 1
    if standardized:
        train_feats, test_feats = _standardized_over_ranks(train_feats, test_feats, info)
    out = knn_accuracy(train_feats, train_labels, test_feats, test_labels, num_classes, k, temperature, gather=gather,
                       device=device)  # the search on the run's device when the features fit there
    return {**out, "train_samples": len(train_source), "eval_samples": len(eval_source)}


def knn_eval(cfg: KnnConfig) -> dict[str, Any]:
    """Features of the train and eval splits, then weighted kNN; returns knn_top1 (and top5). Under torchrun each
    rank computes its part."""
    k, d = cfg.knn, cfg.data
    info = init_distributed(k.device)
    try:
        model, m = load_encoder_model(cfg.model, k.init, k.seed, d)
        model = model.to(info.device)
        with shared_by_ranks(info.rank, info.world_size):  # a survey of volumes is split between the ranks
            train_source, eval_source = split_sources(d, m.in_chans)

        def batches_for(split: str, images: ImageSource) -> Iterable[Batch]:
            return eval_batches(d, split, m.img_size, m.in_chans, k.batch_size, source=images)

        return knn_over_ranks(model, (train_source, eval_source), batches_for, (d.train_split, d.eval_split),
                              info.device, info, k.pooling, k.last_blocks, k.k, k.temperature, k.standardize)
    finally:
        cleanup(info)
