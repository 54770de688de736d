"""The maps of ``openmae evaluate`` of a pretrained MAE: where each image is unlike the normal ones. Each image's
patch distances from the reference images (:mod:`openmae.eval.patch_distance`) and its error map (the squared error
of every patch predicted while removed, :mod:`openmae.eval.error_map`), computed a part on each rank of a torchrun
job; how well they find the defect pixels of ground-truth masks (``evaluate.defect_masks``:
:mod:`openmae.eval.defect_masks`); and kept as files (``evaluate.save_maps``: :mod:`openmae.eval.map_files`)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from openmae.data.build import eval_batches
from openmae.data.config import DataConfig
from openmae.data.datasets import ImageSource
from openmae.engine.distributed import DistInfo, gather_rows, part_of, share_of
from openmae.engine.task_config import EvaluateSection
from openmae.eval.defect_masks import mask_file, pixel_auc, pro_auc, read_mask, regions, smoothed
from openmae.eval.error_map import error_maps
from openmae.eval.progress import reported
from openmae.models.mae import MaskedAutoencoder

log = logging.getLogger("openmae.evaluate")


def maps_over_ranks(model: MaskedAutoencoder, source: ImageSource, d: DataConfig, batch_size: int, info: DistInfo,
                    measure: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], what: str) -> torch.Tensor:
    """Each image's map ``measure(images, seeds)`` (N, ...; seeds: the images' places in the split), in the split's
    order: its patch distances from a bank (N, h, w), its error map (N, H, W); each rank of a torchrun job measures
    its part and every rank returns all the images'."""
    m = model.cfg
    part = part_of(source, info)[0]
    positions = torch.from_numpy(share_of(len(source), info)[0])
    batches = eval_batches(d, d.eval_split, m.img_size, m.in_chans, batch_size, source=part)
    mine, done = [], 0
    with contextlib.closing(reported(batches, what, len(part))) as shown:  # (rank 0's part: its own)
        for batch in shown:
            mine.append(measure(batch.images, positions[done : done + len(batch.images)]).cpu())
            done += len(batch.images)
    maps = torch.cat(mine or [torch.empty(0)])
    return gather_rows(maps.to(info.device), count=len(source), info=info).cpu() if info.enabled else maps


def anomaly_maps(model: MaskedAutoencoder, source: ImageSource, d: DataConfig, e: EvaluateSection, mask_ratio: float,
                 distances: torch.Tensor | None, info: DistInfo) -> dict[str, torch.Tensor]:
    """Each image's maps, smoothed by ``evaluate.map_sigma``: ``distance_map`` (N, h, w; finer with
    ``evaluate.map_views``), its patch ``distances`` where reference images are given, and ``error_map`` (N, H, W),
    computed here where it is scored (``evaluate.defect_masks``) or the only map to keep (``evaluate.save_maps``
    without reference images)."""
    found = {"distance_map": distances} if distances is not None else {}
    if e.defect_masks or distances is None:  # the model's passes: twice the reconstruction's
        found["error_map"] = maps_over_ranks(model, source, d, e.batch_size, info,  # (N, H, W)
                                             lambda x, seeds: error_maps(model, x, seeds, mask_ratio), "error maps")
    if e.map_sigma:
        log.info("  the maps spread to the pixels bilinearly and blurred by a Gaussian of sigma %g pixels, as "
                 "PatchCore's", e.map_sigma)
    return {name: smoothed(values, model.cfg.img_size, e.map_sigma) for name, values in found.items()}


def localisation(source: ImageSource, maps: dict[str, torch.Tensor], labels: np.ndarray, good: int, masks: Path,
                 img_size: tuple[int, int], crop: float | None) -> dict[str, Any]:
    """How well each of ``maps`` (N, h, w) or (N, H, W), higher where less normal, finds the defect pixels of the
    ground-truth ``masks`` (MVTec AD's ``ground_truth/``; the images of class ``good`` of ``labels`` have none):
    the pixel ROC-AUC and the per-region overlap (PRO, up to 30% false positives), in percent, over all images
    (``pixel_auc_<map>``, ``pro_<map>``) and for the normal images with each other class's
    (``localisation_per_class``); logged."""
    truth = torch.zeros(len(source), *img_size, dtype=torch.bool)  # (N, H, W)
    for i in np.flatnonzero(labels != good):  # image files (evaluate refuses images held in memory)
        truth[i] = read_mask(mask_file(masks, Path(source.file(int(i))[0])), img_size, crop)
    areas = regions(truth)  # (N, H, W): each defect region's number, 0 elsewhere

    def measured(kept: torch.Tensor | slice) -> dict[str, float]:
        return {f"{measure}_{name}": value for name, values in maps.items() for measure, value in
                (("pixel_auc", pixel_auc(values[kept], truth[kept])), ("pro", pro_auc(values[kept], areas[kept])))}

    out: dict[str, Any] = {**measured(slice(None)), "localisation_per_class": {}}
    for c, name in enumerate(source.classes):
        if c != good and (labels == c).any():  # as detection's: a class without images has no AUC
            out["localisation_per_class"][name] = measured(torch.from_numpy((labels == good) | (labels == c)))
    log.info("  the defect pixels of %s (%.2f%% of the pixels, %d regions) told from the others: %s", masks,
             100 * float(truth.double().mean()), int(areas.max()), "; ".join(
                 f"{name.replace('_', ' ')}: pixel ROC-AUC {out[f'pixel_auc_{name}']:.1f}, PRO {out[f'pro_{name}']:.1f}"
                 for name in maps))
    return out
