"""``openmae knn``: weighted kNN accuracy of a (pretrained or random) encoder on a labelled dataset."""

from __future__ import annotations

import logging
from typing import Any

import torch

from openmae.convert.checkpoints import load_state_dict_into
from openmae.data.build import eval_batches, split_sources
from openmae.data.config import DataConfig
from openmae.engine.config import ModelSection
from openmae.engine.distributed import pick_device
from openmae.engine.task_config import KnnConfig
from openmae.engine.weights import resolve_encoder
from openmae.eval.features import extract_features
from openmae.eval.knn import knn_accuracy, standardize
from openmae.models.mae import MaskedAutoencoder

log = logging.getLogger("openmae.knn")


def load_encoder_model(model: ModelSection, init: str, seed: int = 0, data: DataConfig | None = None
                       ) -> MaskedAutoencoder:
    """An MAE whose encoder holds ``init``'s weights (decoder optional), or a random one when ``init`` is empty;
    ``data`` takes the normalisation ``init`` records when its own is unset."""
    cfg, sd, _ = resolve_encoder(model, init, data=data)
    torch.manual_seed(seed)
    mae = MaskedAutoencoder(cfg)
    if sd is not None:
        load_state_dict_into(mae, sd)
    return mae


def knn_eval(cfg: KnnConfig) -> dict[str, Any]:
    """Features of the train and eval splits, then weighted kNN; returns knn_top1 (and top5)."""
    k = cfg.knn
    device = pick_device(k.device)
    model = load_encoder_model(cfg.model, k.init, k.seed, cfg.data).to(device)
    m, d = model.cfg, cfg.data
    train_source, eval_source = split_sources(d, m.in_chans)
    train = extract_features(model, eval_batches(d, d.train_split, m.img_size, m.in_chans, k.batch_size,
                                                 source=train_source), device, k.pooling, last_blocks=k.last_blocks)
    test = extract_features(model, eval_batches(d, d.eval_split, m.img_size, m.in_chans, k.batch_size,
                                                source=eval_source), device, k.pooling, last_blocks=k.last_blocks)
    num_classes = int(max(train[1].max(), test[1].max())) + 1
    train_feats, test_feats = standardize(train[0], test[0]) if k.standardize else (train[0], test[0])
    out = knn_accuracy(train_feats, train[1], test_feats, test[1], num_classes, k.k, k.temperature)
    return {**out, "train_samples": len(train[0]), "eval_samples": len(test[0])}
