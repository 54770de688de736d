"""``openmae evaluate``: the accuracy of a trained classifier (fine-tuned, or an online linear probe) on a labelled
split, without training: top-1 / top-5 / loss as fine-tuning measured them, per-class accuracy and the confusion
matrix (the official code's ``--eval``, with the per-class view a user needs to see what the model confuses)."""

from __future__ import annotations

import csv
import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from openmae.config import ConfigError
from openmae.convert.checkpoints import (
    TRAIN_A_DECODER,
    describe,
    file_architecture,
    holds_decoder,
    infer_config,
    trained_multi_label,
)
from openmae.convert.files import averaged_weights, load_file, unwrap_state_dict
from openmae.convert.timm_train import timm_model_facts
from openmae.data.build import eval_batches, require_labels, source_for
from openmae.data.config import DataConfig
from openmae.data.datasets import ImageSource
from openmae.data.normalization import inherit_stats
from openmae.data.ranks import shared_by_ranks
from openmae.engine.classifier import LABEL_READING, chosen_on, evaluate_share
from openmae.engine.config import ModelSection
from openmae.engine.distributed import DistInfo, cleanup, init_distributed
from openmae.engine.evaluate_reconstruction import evaluate_reconstruction
from openmae.engine.linprobe import probe_global_pool
from openmae.engine.logging import setup_console
from openmae.engine.precision import autocast_dtype
from openmae.engine.task_config import EvaluateConfig
from openmae.eval.multilabel import THRESHOLD, multilabel_scores
from openmae.eval.patch_distance import REFERENCE_IMAGES
from openmae.eval.plots import confusion_plot, precision_recall_plot, reliability_plot
from openmae.eval.temperature import GRID
from openmae.models.mae import MAEConfig
from openmae.models.vit import create_classifier

log = logging.getLogger("openmae.evaluate")

def _head_kind(obj: dict[str, Any], path: str) -> tuple[str, bool]:
    """(global_pool, BatchNorm head) of the classifier stored in ``obj``, or a ConfigError saying what the file is.
    A probe's BatchNorm head reads the final norm's output (``create_classifier(..., fc_norm=False)``)."""
    run_cfg = obj.get("config") if isinstance(obj.get("config"), dict) else {}
    if "global_pool" in obj:  # fine-tuning's model-best.pth, a timm model folder
        return str(obj["global_pool"]), False
    if "finetune" in run_cfg:  # a fine-tuning run checkpoint (model-last.pth, checkpoint-*.pth)
        return str(run_cfg["finetune"].get("global_pool", "avg")), False
    probe = run_cfg.get("linprobe", {})
    mode = obj.get("mode", probe.get("mode"))
    if mode == "online":  # probes written before the pooling was stored read the cls token
        return probe_global_pool(obj.get("pooling", probe.get("pooling", "cls"))), True
    if mode == "cached":
        raise ConfigError(f"{path} is a linear probe trained on cached features: its head reads pooled features of "
                          "the encoder's last blocks, which only `openmae linprobe` computes; re-run that probe "
                          "(with data.* set to the split to measure), or train an online one (linprobe.mode=online)")
    if (timm := timm_model_facts(obj)) is not None:  # a checkpoint of timm's train.py: its model says
        return timm["global_pool"], False
    weights = obj.get("model", {})
    if not run_cfg and "head.weight" in weights and "model_config" not in obj:
        # a classifier of the official fine-tuning code (timm's keys): global pooling replaces the final norm by
        # fc_norm (its default, --global_pool), the cls token keeps it (--cls_token)
        return ("avg" if "fc_norm.weight" in weights else "token"), False
    encoder_alone = "cls_token" in weights and "head.weight" not in weights  # the official mae_pretrain_vit_*
    if "pretrain" in run_cfg or encoder_alone or any(k.startswith(("decoder_", "mask_token")) for k in weights):
        raise ConfigError(f"{path} is a pretrained encoder (no classifier head, and no decoder whose reconstruction "
                          "evaluate could measure): fine-tune it first (`openmae finetune --checkpoint ...`) and "
                          "evaluate that run's model-best.pth, or measure the encoder itself with `openmae knn` / "
                          "`openmae linprobe`; to measure its reconstructions, "
                          + TRAIN_A_DECODER.format(path=path))
    raise ConfigError(f"{path} is not a classifier written by openmae (no fine-tuning or probe settings in it; keys "
                      f"{sorted(obj)[:8]}); give the model-best.pth or a run checkpoint of `openmae finetune` or "
                      "`openmae linprobe linprobe.mode=online`")


def _shapes(sd: dict[str, torch.Tensor]) -> str:
    """What a classifier's tensors say of its encoder, for an error message."""
    try:
        return describe(infer_config(sd).__dict__)
    except (KeyError, ValueError):
        return "no ViT encoder"


def load_classifier(path: str, data: DataConfig | None = None, obj: Any = None, model: ModelSection | None = None
                    ) -> tuple[nn.Module, MAEConfig]:
    """The classifier stored at ``path`` (its architecture from the file's model config) and that config;
    ``data`` takes the normalisation the file records when its own is unset; ``obj``: the file, already loaded;
    ``model``: settings over the file's architecture (``model.num_heads`` where the file records none)."""
    obj = load_file(path) if obj is None else obj
    if model is not None and model.ema:
        obj = averaged_weights(obj, path)
        log.info("%s: its averaged (EMA) weights are measured (model.ema=true)", path)
    timm = timm_model_facts(obj)
    if not isinstance(obj, dict) or not (isinstance(obj.get("model"), dict) or timm is not None):
        raise ConfigError(f"{path} holds no 'model' weights (a bare weights file such as model-timm.safetensors "
                          "carries no architecture); give the run's model-best.pth or a run checkpoint")
    global_pool, bn_head = _head_kind(obj, path)
    sd: dict[str, torch.Tensor] = unwrap_state_dict(obj) if timm is not None else obj["model"]
    head_key = "head.1.weight" if bn_head else "head.weight"
    head = sd.get(head_key)
    if head is None:
        raise ConfigError(f"{path} has no classifier head weights ({head_key})")
    # openmae's files store their architecture; the official code's checkpoints name it (args), or the shapes say it
    overrides = model.overrides() if model is not None else {}
    named = model is not None and model.name != "auto"  # a preset named over the file's architecture
    if named:
        cfg = model.resolve()
    else:
        cfg = file_architecture(obj, sd, path, heads_set="num_heads" in overrides)
        cfg = MAEConfig(**{**cfg.to_dict(), **overrides})
    if data is not None:
        inherit_stats(data, obj, path, cfg.in_chans)
    fc_norm = False if bn_head else timm["fc_norm"] if timm is not None else obj.get("fc_norm")  # timm's say it
    classifier = create_classifier(cfg, head.shape[0], global_pool, bn_head=bn_head, head_in=head.shape[1],
                                   fc_norm=fc_norm)
    try:
        classifier.load_state_dict(sd)
    except RuntimeError as err:
        said = " ".join(str(err).split(":", 1)[-1].split())  # past torch's "Error(s) in loading ... for X:"
        raise ConfigError(
            f"{path}: its weights do not fit the classifier {f'model.name={model.name}' if named else 'its settings'} "
            f"describe{'s' * named} ({describe(cfg.__dict__)}, {global_pool} pooling, {head.shape[0]} classes): "
            f"{said[:300]}{' ...' if len(said) > 300 else ''}; " + (
                f"the file holds {_shapes(sd)}: name that model, or model.name=auto to read it from the file" if named else
                "the file was changed or written by another program")) from None
    return classifier, cfg


def write_predictions(path: Path, source: ImageSource, names: list[str], labels: torch.Tensor, top: torch.Tensor,
                      top_probs: torch.Tensor) -> None:
    """A CSV row an image, in the split's order: the image (its file), its class, the predicted class and its
    probability, whether it was right, and the top-5 classes with their probabilities (error analysis; a
    ``data.name=csv`` list read back, or a spreadsheet)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["image", "label", "predicted", "probability", "correct", "top5", "top5_probabilities"])
        for i in range(len(source)):
            ranked = top[i].tolist()  # (k,) classes, most probable first
            out.writerow([source.describe(i), names[int(labels[i])], names[ranked[0]], f"{float(top_probs[i, 0]):.6f}",
                          int(ranked[0] == int(labels[i])), " ".join(names[c] for c in ranked),
                          " ".join(f"{float(p):.6f}" for p in top_probs[i])])


def run_evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """Top-1 / top-5 / mean cross-entropy of ``evaluate.init`` on ``data.eval_split`` (held-out images with
    ``data.holdout``), per-class accuracy and the confusion matrix (rows: true class, columns: predicted); of a
    pretrained MAE, its reconstruction loss (:mod:`openmae.engine.evaluate_reconstruction`). Under torchrun each rank
    measures its part of the images."""
    info = init_distributed(cfg.evaluate.device)
    try:
        return _evaluate(cfg, info)
    finally:
        cleanup(info)


def _evaluate(cfg: EvaluateConfig, info: DistInfo) -> dict[str, Any]:
    e, d = cfg.evaluate, cfg.data
    setup_console(info.is_main)  # the per-class table is printed through the log
    device = info.device
    obj = load_file(e.init)
    if holds_decoder(obj):  # a pretrained MAE: how well it reconstructs the images
        return evaluate_reconstruction(cfg, info, obj)
    if d.name == "folder":
        raise ConfigError(f"data.name=folder reads no labels, and {e.init} is a classifier: measure it on a labelled "
                          "dataset, a named one (data.name=fashion-mnist ...) or data.name=imagefolder data.path=...")
    for key, value, default in (("mask_ratio", e.mask_ratio, 0.0), ("rank_by", e.rank_by, "loss"),
                                ("reference", e.reference, ""), ("reference_images", e.reference_images, ""),
                                ("reference_coreset", e.reference_coreset, 1.0),
                                ("reference_max_images", e.reference_max_images, REFERENCE_IMAGES),
                                ("save_reference", e.save_reference, ""), ("map_views", e.map_views, 1),
                                ("normal_class", e.normal_class, ""),
                                ("defect_masks", e.defect_masks, ""), ("map_sigma", e.map_sigma, 0.0),
                                ("save_maps", e.save_maps, "")):
        if value != default:
            raise ConfigError(f"evaluate.{key}={value} applies to a pretrained MAE, and {e.init} is a classifier: "
                              "leave it out")
    model, mae_cfg = load_classifier(e.init, d, obj, model=cfg.model)
    classes = model.num_classes
    if trained_multi_label(obj) and not d.multi_label:  # a classifier of several classes an image reads its labels so
        if d.name != "csv":
            raise ConfigError(f"{e.init} was trained on several classes an image (data.multi_label), which only a CSV "
                              f"list holds; data.name={d.name} has one class an image: give the list it was trained "
                              "on (--data labels.csv)")
        d.multi_label = True
        log.info("%s was trained on several classes an image: the labels are read as such (data.multi_label=true)",
                 e.init)
    record = obj if isinstance(obj, dict) else {}
    _read_labels_as_trained(d, record, e.init)
    require_labels(d)
    # several classes an image: each class's threshold of the best F1 where the run chose model-best.pth
    fitted = record.get("thresholds") if e.thresholds == "auto" and isinstance(record.get("thresholds"), list) else None
    # and the temperature that calibrated those images (a file of another program, or of before it: none)
    scale = record.get("temperature") if isinstance(record.get("temperature"), (int, float)) else None
    with shared_by_ranks(info.rank, info.world_size):  # a survey of volumes is split between the ranks
        source = source_for(d, d.eval_split, mae_cfg.in_chans, d.max_eval_samples)
    names = list(source.classes) or [str(i) for i in range(classes)]
    if len(names) != classes:
        raise ConfigError(f"the classifier in {e.init} has {classes} outputs but the '{d.eval_split}' split of "
                          f"data.name={d.name} has {len(names)} classes; evaluate on the dataset it was trained on")

    def batches_for(images: ImageSource):
        return eval_batches(d, d.eval_split, mae_cfg.img_size, mae_cfg.in_chans, e.batch_size, source=images)

    # under torchrun each rank measures its part of the images: the metrics of all on every rank
    metrics = evaluate_share(model.to(device), source, batches_for, device, info,
                             autocast_dtype(e.precision, device, hint=False), confusion=True, flip=e.tta == "flip",
                             what=f"evaluation of the {d.eval_split} images",
                             keep=bool(e.predictions) or (bool(e.plot) and d.multi_label)  # its curves need them
                             or (d.multi_label and fitted is not None), fitted=None if scale is None else {"temperature": scale})
    say_fitted = functools.partial(_say_fitted, metrics, scale, fitted, record.get("chosen_on"), chosen_on(d))
    if d.multi_label:
        return _report_multilabel(cfg, info, metrics, source, names, fitted, record.get("chosen_on"), say_fitted)
    kept = {key: metrics.pop(key) for key in ("labels", "top", "top_probs") if key in metrics}
    confusion: list[list[int]] = metrics.pop("confusion")
    # a class's top-1 is its recall (nan: no images of it)
    per_class = {name: float("nan") if r is None else r for name, r in zip(names, metrics.pop("per_class_recall"))}
    by_name = {key: dict(zip(names, metrics.pop(f"per_class_{key}", [None] * classes)))
               for key in ("precision", "f1", "auc")}
    split = f"held-out part of '{d.train_split}'" if d.holdout else f"'{d.eval_split}'"
    view = " (flip test-time augmentation)" if e.tta == "flip" else ""
    auc = f" ROC-AUC {metrics['roc_auc']:.2f}" if "roc_auc" in metrics else ""
    log.info("%s on the %s split (%d images)%s: top-1 %.2f top-5 %.2f balanced accuracy %.2f macro F1 %.2f%s loss "
             "%.4f ECE %.2f", e.init, split, len(source), view, metrics["top1"], metrics["top5"],
             metrics["balanced_accuracy"], metrics["macro_f1"], auc, metrics["eval_loss"], metrics["ece"])
    say_fitted()
    shown = lambda v: "-" if v is None else f"{v:.2f}"
    log.info("  %-20s %7s %9s %6s %6s %7s", "class", "top-1", "precision", "F1", "AUC", "images")  # top-1: recall
    for i, name in enumerate(names):
        log.info("  %-20s %7.2f %9s %6s %6s %7d", name, per_class[name], shown(by_name["precision"][name]),
                 shown(by_name["f1"][name]), shown(by_name["auc"][name]), sum(confusion[i]))
    result = {**metrics, "tta": e.tta, "samples": len(source), "per_class_top1": per_class,
              "per_class_precision": by_name["precision"], "per_class_f1": by_name["f1"],
              "per_class_auc": by_name["auc"], "classes": names, "confusion": confusion}
    if not info.is_main:  # the main rank writes the files
        return result
    _write_result(e.output, result)
    if e.predictions:
        write_predictions(Path(e.predictions), source, names, **kept)
        log.info("wrote %s (each image's class, top-5 predictions and their probabilities)", e.predictions)
    if e.plot:
        Path(e.plot).parent.mkdir(parents=True, exist_ok=True)
        confusion_plot(confusion, names, e.plot, f"{Path(e.init).name}: top-1 {metrics['top1']:.2f}% on {split}{view}")
        log.info("wrote %s", e.plot)
    _calibration_plot(e.calibration_plot, result, f"{Path(e.init).name} on {split}{view}")
    return result


def _say_fitted(metrics: dict[str, Any], temperature: float | None, thresholds: list[float] | None,
                fitted_on: dict[str, Any] | None, here: dict[str, Any]) -> None:
    """The measures at the ``temperature`` model-best.pth keeps (``scaled_ece``, ``scaled_eval_loss``), said;
    ``temperature`` the file's and ``temperature_here`` the one these images would want; said too when what the
    file keeps was fitted on the images measured (then the numbers at it flatter)."""
    metrics["temperature_here"] = metrics.pop("temperature")
    if metrics["temperature_here"] in (float(GRID[0]), float(GRID[-1])):
        log.info("the temperature these images want is at the end of the range tried (%.3g to %.3g): no one "
                 "temperature calibrates this classifier's probabilities (one barely trained, or all but constant)",
                 float(GRID[0]), float(GRID[-1]))
    if temperature is not None:
        metrics["temperature"] = temperature
        log.info("at the temperature %.3g fitted where the run chose model-best.pth: ECE %.2f (unscaled %.2f), loss "
                 "%.4f (unscaled %.4f); these images' own temperature would be %.3g", temperature,
                 metrics["scaled_ece"], metrics["ece"], metrics["scaled_eval_loss"], metrics["eval_loss"],
                 metrics["temperature_here"])
    if fitted_on is not None and fitted_on == here and (temperature is not None or thresholds):
        # said, not warned: a run without data.holdout chose on the test split, and evaluating it there is the usual
        # case; only the numbers at the fitted values flatter, not the others
        log.info("the %s kept in the classifier file %s fitted on these very images, so the numbers at %s flatter "
                    "the classifier; train with data.holdout (fitted on held-out training images) and evaluate on the "
                    "test split for numbers that do not", "temperature and thresholds" if temperature is not None and
                    thresholds else "temperature" if temperature is not None else "thresholds",
                    "were" if thresholds else "was", "them" if thresholds else "it")


def _read_labels_as_trained(d: DataConfig, record: dict[str, Any], init: str) -> None:
    """A CSV list's labels read as the classifier's run read them (its ``data.label_columns``, ``uncertain_label``,
    ``label_separator``: model-best.pth's ``labels_read``, a run checkpoint's settings) where none is given."""
    run_data = (record.get("config") or {}).get("data") if isinstance(record.get("config"), dict) else None
    read = record.get("labels_read") or {k: v for k, v in (run_data or {}).items()
                                         if k in LABEL_READING and v not in ((), [], "", None)}
    if d.name != "csv" or not read or not isinstance(read, dict) or any(getattr(d, key) not in ((), "", None)
                                                            for key in LABEL_READING):
        return
    for key, value in read.items():
        setattr(d, key, tuple(value) if key == "label_columns" else value)
    log.info("labels read as %s's run read them: %s (give data.label_columns / data.uncertain_label / "
             "data.label_separator to read them otherwise)", init,
             " ".join(f"data.{k}=[{','.join(v)}]" if isinstance(v, list) else f"data.{k}={v}" for k, v in read.items()))


def _calibration_plot(path: str, result: dict[str, Any], what: str) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        reliability_plot(result["calibration"], path, f"{what}: ECE {result['ece']:.2f}")
        log.info("wrote %s (accuracy against confidence)", path)


def _write_result(path: str, result: dict[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=1))
        log.info("wrote %s", path)


def _report_multilabel(cfg: EvaluateConfig, info: DistInfo, metrics: dict[str, Any], source: ImageSource,
                       names: list[str], fitted: list[float] | None, fitted_on: dict[str, Any] | None,
                       say_fitted: Callable[[], None]) -> dict[str, Any]:
    """``openmae evaluate``'s report of a classifier of several classes an image: mean AP, ROC-AUC, F1 and exact
    match, each class's AP, AUC, precision, recall and F1 at a probability of one half, and its images; with
    ``fitted`` (each class's threshold of the best F1 on the images ``fitted_on`` its run chose on), F1, precision,
    recall and exact match at those too (``tuned_*``)."""
    e, d = cfg.evaluate, cfg.data
    kept = {key: metrics.pop(key) for key in ("labels", "probs") if key in metrics}
    metrics.pop("f1_thresholds")  # fitted on the images measured here: not a measure of them
    per_class = {key: dict(zip(names, metrics.pop(f"per_class_{key}")))
                 for key in ("ap", "auc", "precision", "recall", "f1", "images")}
    split = f"held-out part of '{d.train_split}'" if d.holdout else f"'{d.eval_split}'"
    view = " (flip test-time augmentation)" if e.tta == "flip" else ""
    log.info("%s on the %s split (%d images)%s: mean AP %.2f ROC-AUC %.2f macro F1 %.2f micro F1 %.2f exact match "
             "%.2f loss %.4f ECE %.2f", e.init, split, len(source), view, metrics["mean_ap"], metrics["roc_auc"],
             metrics["macro_f1"], metrics["micro_f1"], metrics["exact_match"], metrics["eval_loss"], metrics["ece"])
    say_fitted()
    tuned = _at_thresholds(kept["labels"], kept["probs"], fitted, fitted_on, names) if fitted else {}
    shown = lambda v: "-" if v is None else f"{v:.2f}"
    more = ("threshold", "tuned F1") if tuned else ()
    log.info("  %-20s %6s %6s %9s %6s %6s %7s" + " %9s %8s" * bool(tuned), "class", "AP", "AUC", "precision", "recall",
             "F1", "images", *more)
    for i, name in enumerate(names):
        log.info("  %-20s %6s %6s %9s %6s %6s %7d" + " %9.4f %8s" * bool(tuned), name,
                 *(shown(per_class[k][name]) for k in ("ap", "auc", "precision", "recall", "f1")),
                 per_class["images"][name], *((fitted[i], shown(tuned["per_class_tuned_f1"][name])) if tuned else ()))
    result = {**metrics, **tuned, "tta": e.tta, "samples": len(source), "classes": names,
              **{f"per_class_{key}": values for key, values in per_class.items()}}
    if not info.is_main:  # the main rank writes the files
        return result
    _write_result(e.output, result)
    if e.predictions:
        write_multilabel_predictions(Path(e.predictions), source, names, kept["labels"], kept["probs"], fitted)
        log.info("wrote %s (each image's classes, those predicted and every class's probability)", e.predictions)
    if e.plot:  # no confusion matrix: each class is a yes / no of its own
        Path(e.plot).parent.mkdir(parents=True, exist_ok=True)
        precision_recall_plot(kept["probs"].numpy(), kept["labels"].numpy(), names, e.plot,
                              f"{Path(e.init).name}: mean AP {metrics['mean_ap']:.2f} on {split}{view}")
        log.info("wrote %s (each class's precision against recall)", e.plot)
    _calibration_plot(e.calibration_plot, result, f"{Path(e.init).name} on {split}{view}, each class a yes / no")
    return result


def _at_thresholds(labels: torch.Tensor, probs: torch.Tensor, fitted: list[float], fitted_on: dict[str, Any] | None,
                   names: list[str]) -> dict[str, Any]:
    """F1, precision, recall and exact match at each class's ``fitted`` threshold (``tuned_*``, ``per_class_tuned_*``,
    ``thresholds``), said."""
    if len(fitted) != len(names):
        raise ConfigError(f"the classifier file holds {len(fitted)} decision thresholds for {len(names)} classes; "
                          "evaluate with evaluate.thresholds=half")
    scores = multilabel_scores(probs.numpy(), labels.numpy(), per_class=True, thresholds=fitted)
    where = "" if fitted_on is None else f" ({fitted_on['split']} of {fitted_on['data']}" + (
        f", data.holdout={fitted_on['holdout']})" if "holdout" in fitted_on else ")")
    log.info("at each class's threshold of the best F1 where the run chose model-best.pth%s: macro F1 %.2f micro F1 "
             "%.2f exact match %.2f (evaluate.thresholds=half leaves them out)", where, scores["macro_f1"],
             scores["micro_f1"], scores["exact_match"])
    return {"tuned_macro_f1": scores["macro_f1"], "tuned_micro_f1": scores["micro_f1"],
            "tuned_exact_match": scores["exact_match"], "thresholds": dict(zip(names, fitted)),
            **{f"per_class_tuned_{key}": dict(zip(names, scores[f"per_class_{key}"]))
               for key in ("precision", "recall", "f1")}}


def write_multilabel_predictions(path: Path, source: ImageSource, names: list[str], labels: torch.Tensor,
                                 probs: torch.Tensor, fitted: list[float] | None = None) -> None:
    """A CSV row an image, in the split's order: the image, its classes and those predicted (probability above one
    half; separated by ``|``), whether they are the same, and each class's probability (a column a class). Labels
    of which some are unknown (``data.uncertain_label=ignore``) add a column ``unknown``: those classes, left out of
    ``exact``. With ``fitted`` (each class's threshold), also ``tuned`` and ``tuned_exact``: the classes predicted
    at those."""
    path.parent.mkdir(parents=True, exist_ok=True)
    unknown = bool(labels.isnan().any())
    cuts = [[THRESHOLD] * len(names)] + ([fitted] if fitted else [])  # each class's threshold: one half, fitted
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["image", "labels", "predicted", "exact", *(["tuned", "tuned_exact"] if fitted else []),
                      *(["unknown"] if unknown else []), *(f"p_{name}" for name in names)])
        for i in range(len(source)):
            truth = [n for n, y in zip(names, labels[i].tolist()) if y > 0.5]
            unsure = [n for n, y in zip(names, labels[i].tolist()) if y != y]  # nan: unknown
            row = [source.describe(i), "|".join(truth)]
            for at in cuts:
                said = [n for n, p, t in zip(names, probs[i].tolist(), at) if p > t]
                row += ["|".join(said), int(truth == [n for n in said if n not in unsure])]
            out.writerow([*row, *(["|".join(unsure)] if unknown else []), *(f"{float(p):.6f}" for p in probs[i])])
