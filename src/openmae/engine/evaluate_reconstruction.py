"""``openmae evaluate`` of a pretrained MAE (an encoder with its decoder): how well it reconstructs the images of a
split, which need no labels (:mod:`openmae.eval.reconstruction_error`): the loss of the removed patches, the PSNR
of images, each image's numbers in a CSV and the images it reconstructs worst (named; drawn with ``--plot``). Two
checkpoints (the official ImageNet MAE and one pretrained further on one's own images; two epochs of a run)
measured on the same images see the same masks, as the run's held-out loss (``pretrain.eval_every_epochs``)
does."""

from __future__ import annotations

import csv
import functools
import json
import logging
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from openmae.config import ConfigError
from openmae.convert.checkpoints import load_pretrained
from openmae.data.build import SourceView, eval_batches, source_for
from openmae.data.config import DataConfig
from openmae.data.datasets import ImageSource, stats_for
from openmae.data.normalization import inherit_stats
from openmae.data.ranks import shared_by_ranks
from openmae.engine.distributed import DistInfo, RankSplit, gather_rows, part_of, share_of
from openmae.engine.evaluate_maps import anomaly_maps, localisation, maps_over_ranks
from openmae.engine.precision import autocast_dtype
from openmae.engine.task_config import EvaluateConfig
from openmae.eval.map_files import write_maps
from openmae.eval.patch_distance import (
    REFERENCE_IMAGES,
    PatchReference,
    ReferenceImages,
    distance_map,
    farthest,
    reference_distances,
)
from openmae.eval.ranking import roc_auc
from openmae.eval.reconstruction import Reconstruction, auto_scale, displayed, reconstruct, save_grid
from openmae.eval.reconstruction_error import Errors, reconstruction_errors
from openmae.eval.reference_file import reference_bank
from openmae.eval.typicality import TAIL, Reference
from openmae.models.mae import MaskedAutoencoder

log = logging.getLogger("openmae.evaluate")

PAPER_MASK_RATIO = 0.75
WORST_SHOWN = 5  # the images of the highest loss the log names
WORST_DRAWN = 8  # and --plot draws
# each image's scores, as the log says them; evaluate.rank_by may rank --plot by all but the error map's peak (kept
# only with evaluate.defect_masks or evaluate.save_maps)
RANKINGS = {"loss": "loss", "relative_loss": "relative loss (the squared error over a generic inpainter's)",
            "atypicality": "atypicality (against the reference images)",
            "farthest_patch": "farthest patch (from the reference images' patches)",
            "error_map_peak": "error map's peak (its largest squared error, every patch predicted while removed)"}


def errors_over_ranks(model: MaskedAutoencoder, source: ImageSource, d: DataConfig, batch_size: int,
                      mask_ratio: float, amp_dtype: torch.dtype | None, info: DistInfo, what: str) -> Errors:
    """:func:`reconstruction_errors` of every image of ``source`` (its PSNR for images, not for arrays in their own
    units), each masked by its place in it; each rank of a torchrun job measures its part (``share_of``) and every
    rank returns all the images' errors."""
    m = model.cfg
    positions = share_of(len(source), info)[0]  # each image's place: its mask's seed
    batches = eval_batches(d, d.eval_split, m.img_size, m.in_chans, batch_size, source=part_of(source, info)[0])
    return reconstruction_errors(
        model, batches, positions, mask_ratio, None if d.reads_arrays else stats_for(d, m.in_chans), amp_dtype,
        gather=functools.partial(gather_rows, count=len(source), info=info) if info.enabled else None, what=what)


def run_mask_ratio(obj: Any) -> float | None:
    """The mask ratio the file's pretraining run trained with (None: it records none)."""
    run_cfg = obj.get("config") if isinstance(obj, dict) and isinstance(obj.get("config"), dict) else {}
    ratio = (run_cfg.get("pretrain") or {}).get("mask_ratio") if isinstance(run_cfg.get("pretrain"), dict) else None
    return float(ratio) if isinstance(ratio, (int, float)) else None


def _refuse_classifier_settings(cfg: EvaluateConfig) -> None:
    e = cfg.evaluate
    given = (["evaluate.calibration_plot"] if e.calibration_plot else []) + (
        ["evaluate.tta=flip"] if e.tta != "none" else [])
    if given or cfg.model.ema:
        raise ConfigError(f"{e.init} is a pretrained MAE (encoder and decoder, no classifier): evaluate measures how "
                          f"well it reconstructs the images; {', '.join(given or ['model.ema=true'])} "
                          "applies to classifiers only: leave it out (`openmae visualize` draws reconstructions)")


def evaluate_reconstruction(cfg: EvaluateConfig, info: DistInfo, obj: Any) -> dict[str, Any]:
    """The mean loss (and PSNR) of the removed patches of every image of ``data.eval_split`` (its held-out stand-in
    with ``data.holdout``; an unlabelled folder's images), each masked by its place in the split; under torchrun
    each rank measures its part."""
    e, d = cfg.evaluate, cfg.data
    _refuse_classifier_settings(cfg)
    overrides = cfg.model.overrides()
    model = load_pretrained(obj, None if cfg.model.name == "auto" else cfg.model.name, **overrides)
    m = model.cfg
    if m.decoder_depth == 0:
        raise ConfigError(f"{e.init} has no decoder blocks (decoder_depth 0): nothing reconstructs its images")
    inherit_stats(d, obj, e.init, m.in_chans)
    recorded = run_mask_ratio(obj)
    ratio = e.mask_ratio or recorded or PAPER_MASK_RATIO
    reference, against = run_reference(obj, e.reference, ratio)  # before the pass over the images
    if e.rank_by == "farthest_patch" and not e.reference_images:
        raise ConfigError("evaluate.rank_by=farthest_patch needs evaluate.reference_images=<a folder or CSV list of "
                          "images like the training ones>, whose patch tokens each image's patches are measured from")
    for key, value, default in (("reference_coreset", e.reference_coreset, 1.0),
                                ("reference_max_images", e.reference_max_images, REFERENCE_IMAGES),
                                ("save_reference", e.save_reference, ""), ("map_views", e.map_views, 1)):
        if value != default and not e.reference_images:
            raise ConfigError(f"evaluate.{key}={value} sets how evaluate.reference_images are searched, and none are "
                              "given: add evaluate.reference_images=<a folder or CSV list>, or leave it out")
    if e.map_sigma and not (e.defect_masks or e.save_maps):
        raise ConfigError(f"evaluate.map_sigma={e.map_sigma} smooths the maps scored against evaluate.defect_masks or "
                          "kept by evaluate.save_maps, and neither is given: add one, or leave it out")
    if e.defect_masks and not e.normal_class:
        raise ConfigError(f"evaluate.defect_masks={e.defect_masks} measures how the error maps (and the distance "
                          "maps, with evaluate.reference_images) find the defect pixels: it needs "
                          "evaluate.normal_class=<the class without defects>")
    wanted = ReferenceImages(e.reference_images, e.reference_max_images, e.reference_coreset, e.save_reference,
                             e.map_views)
    bank = (reference_bank(model.to(info.device), wanted, d, m.img_size, m.in_chans, *stats_for(d, m.in_chans),
                           split=RankSplit(info) if info.enabled else None)
            if e.reference_images else None)  # each rank reads its part of the reference, every rank holds it whole
    if e.rank_by == "atypicality" and reference is None:
        raise ConfigError(f"evaluate.rank_by=atypicality needs reference images: {e.init} carries none (a pretraining "
                          "run keeps its held-out images' with pretrain.eval_every_epochs, 10 images or more, at this "
                          "mask ratio); give evaluate.reference=<a CSV `openmae evaluate --predictions` wrote of "
                          "images like the training ones>, or rank by loss or relative_loss")
    with shared_by_ranks(info.rank, info.world_size):  # a survey of volumes is split between the ranks
        source = source_for(d, d.eval_split, m.in_chans, d.max_eval_samples)
    # each image's class and the normal one's, read once (refused before the pass over the images)
    classes = class_labels(source, e.normal_class) if e.normal_class else None
    needs_files = [f"evaluate.{k}={v}" for k, v in (("defect_masks", e.defect_masks), ("save_maps", e.save_maps)) if v]
    if needs_files and len(source) and source.file(0)[0] is None:  # a mask found by, a map kept beside, a file name
        raise ConfigError(f"{' and '.join(needs_files)} needs image files: these images are held in memory "
                          f"(data.name={d.name}), not files; give a folder or a CSV list of image files, or leave it "
                          "out")
    errors = errors_over_ranks(model.to(info.device), source, d, e.batch_size, ratio,
                               autocast_dtype(e.precision, info.device, hint=False), info,
                               f"reconstruction of the {d.eval_split} images")
    whole = f"folder {d.path}" if d.name == "folder" else f"'{d.train_split}' split"
    split = f"held-out part of the {whole}" if d.holdout else whole if d.name == "folder" else f"'{d.eval_split}' split"
    summary = errors.summary()
    whose = "the run's" if e.mask_ratio == 0 and recorded else "set" if e.mask_ratio else "the paper's"
    log.info("%s on the %s (%d images), %.0f%% of each image's patches removed (%s): loss %.4f%s%s; squared "
             "error of the removed pixels %.4f, a generic inpainter's %.4f (a mean ratio of %.3f)", e.init, split,
             len(source), 100 * ratio, whose, summary["loss"], " (per-patch normalised pixels)" if m.norm_pix_loss
             else "", f", PSNR {summary['psnr']:.2f} dB" if "psnr" in summary else "", summary["pixel_loss"],
             summary["inpainting_loss"], summary["relative_loss"])
    scores = {"loss": errors.loss, "relative_loss": errors.relative_loss}
    if reference is not None:
        scores["atypicality"] = torch.from_numpy(reference.score(errors.loss.numpy(), errors.inpainting_loss.numpy()))
        summary["atypicality"] = float(scores["atypicality"].mean())
        summary["atypical_share"] = float((scores["atypicality"] > reference.tail).double().mean())
        log.info("  against %s (%d images): mean atypicality %.2f (theirs about 2); %.1f%% of the images lie beyond "
                 "%.0f%% of the reference's (%.0f%% expected of images like them)", against, reference.count,
                 summary["atypicality"], 100 * summary["atypical_share"], TAIL, 100 - TAIL)
    if bank is not None:
        maps = maps_over_ranks(model, source, d, e.batch_size, info,  # (N, h, w); finer in several views
                               lambda x, _: reference_distances(model, x, bank), "patch distances")
        scores["farthest_patch"] = farthest(maps)
        summary["farthest_patch"] = float(scores["farthest_patch"].mean())
        summary["beyond_reference"] = float((scores["farthest_patch"] > 1).double().mean())
        summary["map_views"] = bank.views  # (a kept reference: the views it was kept in)
        log.info("  against the patches of %s: mean farthest patch %.3f; %.1f%% of the images have a patch farther "
                 "than 99%% of the reference's own", e.reference_images, summary["farthest_patch"],
                 100 * summary["beyond_reference"])
    found = (anomaly_maps(model, source, d, e, ratio, maps if bank is not None else None, info)
             if e.defect_masks or e.save_maps else {})  # each image's maps: where each is unlike the normal images
    if "error_map" in found:  # its peak, as MVTec AD's script scores an image from its map
        scores["error_map_peak"] = found["error_map"].flatten(1).amax(1)
        summary["error_map_peak"] = float(scores["error_map_peak"].mean())
    for key, values in scores.items():
        worst = values.argsort(descending=True)[:WORST_SHOWN].tolist()
        log.info("  highest %s: %s", RANKINGS[key],
                 ", ".join(f"{source.describe(i)} ({float(values[i]):.4f})" for i in worst))
    result = {**summary, "samples": len(source), "mask_ratio": ratio, "norm_pix_loss": m.norm_pix_loss,
              "split": split}
    if classes is not None:
        result.update(detection(source, scores, e.normal_class, *classes))
    if e.defect_masks:  # (normal_class given: refused above without)
        result.update(localisation(source, found, *classes, Path(e.defect_masks), m.img_size, d.eval_crop_pct),
                      map_sigma=e.map_sigma)
    if e.save_maps and info.is_main:
        kept = "distance_map" if "distance_map" in found else "error_map"
        log.info("  each image's %s kept at its size", kept.replace("_", " "))
        write_maps(Path(e.save_maps), [Path(source.file(i)[0]) for i in range(len(source))], found[kept],
                   m.img_size, d.eval_crop_pct)
    if info.is_main:  # the main rank writes the files
        if e.output:
            Path(e.output).parent.mkdir(parents=True, exist_ok=True)
            Path(e.output).write_text(json.dumps(result, indent=1))
            log.info("wrote %s", e.output)
        if e.predictions:
            write_errors(Path(e.predictions), source, errors, scores.get("atypicality"), scores.get("farthest_patch"))
            log.info("wrote %s (each image's loss, squared error, the inpainter's, their ratio%s%s%s)", e.predictions,
                     ", PSNR" if errors.psnr is not None else "", ", atypicality" if reference is not None else "",
                     ", farthest patch" if bank is not None else "")
        if e.plot:
            worst = scores[e.rank_by].argsort(descending=True)[:WORST_DRAWN].tolist()
            draw_worst(model, d, source, worst, ratio, Path(e.plot), RANKINGS[e.rank_by],
                       bank if e.rank_by == "farthest_patch" else None)
    return result


def class_labels(source: ImageSource, normal: str) -> tuple[np.ndarray, int]:
    """Each image's class (N,) and the index of the class ``normal`` (``evaluate.normal_class``), refused where the
    images have no classes, several each, or not that one and another."""
    classes = list(getattr(source, "classes", None) or [])
    labels = [source.file(i)[1] for i in range(len(source))]
    if not classes or any(np.ndim(label) or label < 0 for label in labels):
        raise ConfigError(f"evaluate.normal_class={normal} needs images with one class each (data.name=imagefolder, "
                          "<path>/test/<class>/<image>, as MVTec AD's good/ and defect folders; or a CSV list with a "
                          "label column); these have none: leave it out")
    if normal not in classes or len(classes) < 2:
        raise ConfigError(f"evaluate.normal_class={normal}: the images' classes are {classes}; name the class of "
                          "normal images, beside at least one other")
    return np.asarray(labels, dtype=np.int64), classes.index(normal)


def detection(source: ImageSource, scores: dict[str, torch.Tensor], normal: str, labels: np.ndarray, good: int
              ) -> dict[str, Any]:
    """How well each score (higher: less normal) tells the other classes' images from ``normal``'s (class ``good``
    of the images' ``labels``, :func:`class_labels`): ROC-AUC in percent (:func:`openmae.eval.ranking.roc_auc`), over
    all the others (``detection_auc_<score>``) and for each other class (``detection_auc_per_class``: MVTec AD's
    defect types); logged."""
    is_normal = labels == good
    overall = {key: 100 * roc_auc(values.numpy(), ~is_normal) for key, values in scores.items()}
    out: dict[str, Any] = {"normal_class": normal, **{f"detection_auc_{key}": v for key, v in overall.items()},
                           "detection_auc_per_class": {}}
    for c, name in enumerate(source.classes):
        if c != good and (labels == c).any():
            kept = is_normal | (labels == c)
            out["detection_auc_per_class"][name] = {key: 100 * roc_auc(values.numpy()[kept], (labels == c)[kept])
                                                    for key, values in scores.items()}
    log.info("  telling the %d images of other classes from the %d of %s (ROC-AUC, 50 chance): %s", int((~is_normal)
             .sum()), int(is_normal.sum()), normal, ", ".join(f"{RANKINGS[k].split(' (')[0]} {v:.1f}" for k, v in
                                                              overall.items()))
    return out


def run_reference(obj: Any, path: str, ratio: float) -> tuple[Reference | None, str]:
    """The reference the atypicality is measured against, and its name: ``evaluate.reference`` (a CSV) when given,
    else the one a pretraining run's model-last.pth carries (its held-out images', at the last evaluation) when it
    was measured at this mask ratio; (None, "") without either."""
    if path:
        return Reference.from_csv(path), path
    kept = obj.get("reconstruction_reference") if isinstance(obj, dict) else None
    if not isinstance(kept, dict) or kept.get("mask_ratio") != ratio:
        if isinstance(kept, dict):
            log.info("the run's reference of its held-out images was measured at mask ratio %s, not %s: no "
                     "atypicality", kept.get("mask_ratio"), ratio)
        return None, ""
    return Reference.from_dict(kept), "the run's held-out images"


def draw_worst(model: MaskedAutoencoder, d: DataConfig, source: ImageSource, worst: list[int], ratio: float,
               path: Path, what: str = RANKINGS["loss"], bank: PatchReference | None = None) -> None:
    """The images ``worst`` (indices into ``source``), one row each as ``openmae visualize`` draws them (original |
    masked | reconstruction | pasted), each masked as it was measured (its place in the split); with ``bank``, as
    ``visualize --distances`` draws them (original | each patch's distance from the reference), where the patch
    that ranked them is."""
    m = model.cfg
    mean, std = stats_for(d, m.in_chans)
    batch = next(iter(eval_batches(d, d.eval_split, m.img_size, m.in_chans, len(worst),
                                   source=SourceView(source, worst))))
    if bank is not None:
        imgs = batch.images
        save_grid(distance_map(model, imgs, bank, displayed(imgs, mean, std, d.reads_arrays)(imgs)), path,
                  auto_scale(m.img_size))
        log.info("wrote %s (the %d images of the highest %s, the highest first: original | each patch's distance "
                 "from the reference, black 0 to white-yellow 2)", path, len(worst), what)
        return
    rows = [reconstruct(model, batch.images[i : i + 1], mean, std, ratio, seed=place + 1, stretch=d.reads_arrays)
            for i, place in enumerate(worst)]  # seed place + 1: the noise seeded_noise draws for that place
    save_grid(Reconstruction(*(torch.cat([getattr(r, f.name) for r in rows]) for f in fields(Reconstruction))),
              path, auto_scale(m.img_size))
    log.info("wrote %s (the %d images of the highest %s, the highest first: original | masked | reconstruction | "
             "pasted)", path, len(worst), what)


def write_errors(path: Path, source: ImageSource, errors: Errors, atypicality: torch.Tensor | None = None,
                 farthest: torch.Tensor | None = None) -> None:
    """A CSV row an image, in the split's order: the image (its file), its loss, its squared error of the removed
    pixels, the generic inpainter's, their ratio, the PSNR, the atypicality and the farthest patch (the last three
    left out where none): such a file of images like the training ones is what ``evaluate.reference`` reads."""
    columns = {"loss": errors.loss, "pixel_loss": errors.pixel_loss, "inpainting_loss": errors.inpainting_loss,
               "relative_loss": errors.relative_loss, "psnr": errors.psnr, "atypicality": atypicality,
               "farthest_patch": farthest}
    columns = {key: value.tolist() for key, value in columns.items() if value is not None}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["image", *columns])
        for i in range(len(source)):
            out.writerow([source.describe(i), *(f"{values[i]:.6g}" for values in columns.values())])
