"""``openmae embed``: an encoder's features of every image of a split, written for other tools (retrieval, clustering,
a classifier of one's own, a map of the data): a safetensors file of ``features`` (N, D) float32 and, where the images
have classes, ``labels`` ((N,) class indices, or (N, classes) rows of 0 / 1 for several an image), with how they were
computed in its metadata; beside it a CSV of the images in the same order. The features are those kNN and cached
probes read (:func:`openmae.eval.features.extract_features`). Under torchrun each rank computes its part."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import torch

from openmae.convert.files import save_file
from openmae.data.build import eval_batches, source_for
from openmae.data.datasets import ImageSource
from openmae.data.ranks import shared_by_ranks
from openmae.engine.distributed import cleanup, gather_rows, init_distributed, part_of, same_buffers, wait_for_main
from openmae.engine.knn_eval import load_encoder_model
from openmae.engine.precision import autocast_dtype
from openmae.engine.task_config import EmbedConfig
from openmae.eval.features import extract_features
from openmae.eval.plots import embedding_plot

log = logging.getLogger("openmae.embed")


def embed(cfg: EmbedConfig) -> dict[str, Any]:
    """Write ``embed.output`` (and its CSV, and ``embed.plot``); returns what was written."""
    e, d = cfg.embed, cfg.data
    info = init_distributed(e.device)
    try:
        model, m = load_encoder_model(cfg.model, e.init, e.seed, d)
        model = model.to(info.device)
        split = e.split or d.train_split
        with shared_by_ranks(info.rank, info.world_size):  # a survey of volumes is split between the ranks
            source = source_for(d, split, m.in_chans, d.max_samples)
        same_buffers(model, info)
        part, _ = part_of(source, info)
        feats, labels = extract_features(model, eval_batches(d, split, m.img_size, m.in_chans, e.batch_size,
                                                             source=part), info.device, e.pooling,
                                         autocast_dtype(e.precision, info.device, hint=False), e.last_blocks,
                                         what=f"features of the {split} images", total=len(part))
        feats, labels = gather_rows(feats, len(source), info), gather_rows(labels, len(source), info)  # all, in order
        classes = list(source.classes)
        result = {"output": e.output, "images": len(source), "width": feats.shape[1], "classes": len(classes)}
        if info.is_main:
            _write(cfg, source, feats, labels if classes else None, classes, split)
        wait_for_main(info)
        return result
    finally:
        cleanup(info)


def _write(cfg: EmbedConfig, source: ImageSource, feats: torch.Tensor, labels: torch.Tensor | None,
           classes: list[str], split: str) -> None:
    e, d = cfg.embed, cfg.data
    out = Path(e.output)
    tensors = {"features": feats.float(), **({"labels": labels} if labels is not None else {})}
    how = {"init": e.init or f"random ({cfg.model.name}, seed {e.seed})", "pooling": e.pooling,
           "last_blocks": e.last_blocks, "data": d.path or d.name, "split": split, "images": len(source),
           "classes": classes, "images_csv": out.with_suffix(".csv").name}
    save_file(tensors, out, metadata={"openmae_embeddings": how})
    listed = out.with_suffix(".csv")
    with open(listed, "w", newline="") as fh:
        rows = csv.writer(fh)
        rows.writerow(["index", "image", *(["label"] if labels is not None else [])])
        for i in range(len(source)):
            rows.writerow([i, source.describe(i), *([_named(labels[i], classes)] if labels is not None else [])])
    log.info("wrote %s (features %s of %d images%s) and %s (the images, in the same order)", out,
             "x".join(map(str, feats.shape)), len(source), f", {len(classes)} classes" if classes else "", listed)
    if e.plot:
        title = f"{Path(e.init).name if e.init else 'random init'}: {split} images, {e.pooling} features"
        embedding_plot(feats.numpy(), None if labels is None else labels.numpy(), classes, e.plot, title)
        log.info("wrote %s (the images' first two principal components)", e.plot)


def _named(label: torch.Tensor, classes: list[str]) -> str:
    """A label's class name(s): a class index, or a row of several (``a|b``; nan: unknown, left out)."""
    if label.ndim == 0:
        return classes[int(label)] if 0 <= int(label) < len(classes) else ""
    return "|".join(name for name, y in zip(classes, label.tolist()) if y > 0.5)
