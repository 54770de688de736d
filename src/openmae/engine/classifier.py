"""What fine-tuning and linear probing share: evaluating top-1/top-5, keeping the best weights and exporting them
in timm's layout."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from openmae.convert.files import save_file, weights_metadata
from openmae.data.config import DataConfig
from openmae.data.datasets import ImageSource
from openmae.data.loader import Batch, batches_of
from openmae.engine.config import SELECT_BY
from openmae.engine.distributed import DistInfo, gather_rows, part_of, same_buffers, wait_for_main
from openmae.engine.loop import Run
from openmae.engine.row_loss import image_losses
from openmae.eval.calibration import calibration_bins, multilabel_calibration, top_probability
from openmae.eval.confusion import class_scores, confusion_matrix
from openmae.eval.multilabel import f1_thresholds, multilabel_scores
from openmae.eval.progress import reported
from openmae.eval.ranking import MAX_KEPT_PROBABILITIES, auc_scores, keeps_probabilities
from openmae.eval.temperature import best_temperature, nll_by_temperature
from openmae.models.vit import fold_bn_head

log = logging.getLogger("openmae.classifier")


@torch.no_grad()
def evaluate(model: nn.Module, batches, device: torch.device, amp_dtype: torch.dtype | None = None,
             confusion: bool = False, flip: bool = False,
             gather: Callable[[torch.Tensor], torch.Tensor] | None = None, what: str = "evaluation",
             total: int | None = None, keep: bool = False, fitted: dict[str, Any] | None = None,
             all_images: int | None = None) -> dict[str, Any]:
    """Top-1, top-5 (in percent) and mean cross-entropy over every batch; with ``confusion``, also the confusion
    matrix as ``confusion`` (a list of rows: true class, columns: predicted class). ``flip``: test-time
    augmentation, each image's class probabilities averaged with its horizontal mirror's (ranks and cross-entropy
    are then those of the averaged probabilities). ``gather``: the batches are this rank's part of the images
    (``openmae.engine.distributed.share_of``), and ``gather`` turns each rank's per-image results into all the
    images' (``gather_rows``): every rank returns the metrics of all. With ``total`` (the images of the batches), how
    far it came is reported as ``what`` (:func:`openmae.eval.progress.reported`). Balanced accuracy and macro F1
    always (:mod:`openmae.eval.confusion`; with ``confusion``, each class's recall, precision and F1 too); ROC-AUC
    (:mod:`openmae.eval.ranking`; with ``confusion``, each class's too) while the images (``all_images``: all the ranks'
    together; default ``total``) times the classes stay within ``MAX_KEPT_PROBABILITIES``. ``keep``: also
    each image's label, top-5 classes and their probabilities, in the images' order (``labels``, ``top``,
    ``top_probs``: tensors).

    Batches of labels (B, classes) (``data.multi_label``) are measured as several yes / no classes an image
    (:mod:`openmae.eval.multilabel`: mean AP, ROC-AUC, F1, exact match; eval_loss the binary cross-entropy averaged
    over the classes); ``confusion`` then adds each class's scores, ``keep`` the images' ``labels`` and ``probs``,
    ``fitted["thresholds"]`` (each class's, fitted on other images) macro / micro F1 and exact match at them
    (``tuned_*``).

    ``ece``: the expected calibration error (:mod:`openmae.eval.calibration`); with ``confusion``, its bins
    (``calibration``). ``temperature``: the temperature whose scaling calibrates these images best
    (:mod:`openmae.eval.temperature`); ``fitted["temperature"]`` (one fitted on other images): the ECE and loss at
    it (``scaled_ece``, ``scaled_eval_loss``)."""
    was_training = model.training
    model.eval()
    # per image, on the device: one host sync at the end, not one a batch
    labels_seen, tops, losses, top_probs, probs_seen, sure = [], [], [], [], [], []
    grid_sums, grid_counts, scaled_seen, scaled_losses = [], [], [], []  # temperature scaling's
    given = (fitted or {}).get("temperature")
    counted = total if all_images is None else all_images  # ROC-AUC's images: all the ranks' (the same on each)
    multi = False
    with batches_of(batches) as each, contextlib.closing(reported(each, what, total)) as shown:
        for batch in shown:
            images, labels = batch.images.to(device, non_blocking=True), batch.labels.to(device)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = model(images).float()  # (B, classes)
                mirrored = model(images.flip(-1)).float() if flip else None
            multi = labels.ndim == 2  # (B, classes) of 0 / 1: several classes an image (data.multi_label)
            if multi:  # each class a yes / no; flip: the two probabilities averaged
                probs = logits.sigmoid() if mirrored is None else (logits.sigmoid() + mirrored.sigmoid()) / 2
                losses.append(image_losses(logits, labels, None if mirrored is None else probs))  # (B,)
                labels_seen.append(labels)
                probs_seen.append(probs)
                _scaling(logits if mirrored is None else torch.logit(probs, eps=1e-7), labels, given, grid_sums,
                         grid_counts, scaled_seen, scaled_losses)
                continue
            if mirrored is not None:  # log of the mean of the two softmaxes: a log-probability, so cross_entropy
                logits = (torch.logsumexp(torch.stack([logits.log_softmax(1), mirrored.log_softmax(1)]), 0)  # stays
                          - math.log(2))  # its NLL
            _scaling(logits, labels, given, grid_sums, grid_counts, scaled_seen, scaled_losses)
            losses.append(F.cross_entropy(logits, labels, reduction="none"))  # (B,)
            tops.append(logits.topk(min(5, logits.shape[1]), dim=1).indices)  # (B, min(5, classes))
            sure.append(top_probability(logits))  # (B,): the top class's probability
            labels_seen.append(labels)
            width = logits.shape[1]  # the classes
            ranked = keeps_probabilities(counted, width)
            probs = logits.softmax(1) if keep or ranked else None  # (B, classes)
            if keep:
                top_probs.append(probs.gather(1, tops[-1]))  # (B, min(5, classes))
            if ranked:
                probs_seen.append(probs)
    model.train(was_training)
    parts = [torch.cat(grid_sums), torch.cat(grid_counts), *(
        [torch.cat(scaled_seen), torch.cat(scaled_losses).double()] if given is not None else [])]
    parts = [gather(t) for t in parts] if gather is not None else parts  # all the images'
    temperature = {"temperature": best_temperature(parts[0], parts[1])}  # the one these images would want
    if multi:
        labels, probs, loss = torch.cat(labels_seen), torch.cat(probs_seen), torch.cat(losses).double()
        if gather is not None:
            labels, probs, loss = gather(labels), gather(probs), gather(loss)
        labels, probs = labels.cpu(), probs.cpu()
        out = _multilabel_metrics(labels, probs, loss, confusion, keep, (fitted or {}).get("thresholds"))
        if given is not None:  # fitted on other images: the calibration it gives these
            out.update(scaled_ece=multilabel_calibration(parts[2].cpu().numpy(), labels.numpy())["ece"],
                       scaled_eval_loss=parts[3].mean().item())
        return {**out, **temperature}
    labels, top, loss = torch.cat(labels_seen), torch.cat(tops), torch.cat(losses).double()
    confidence = torch.cat(sure)  # (N,)
    every_prob = torch.cat(probs_seen) if probs_seen else None  # (N, classes)
    chosen_probs = torch.cat(top_probs) if keep else None  # (N, min(5, classes))
    if gather is not None:
        labels, top, loss, confidence = gather(labels), gather(top), gather(loss), gather(confidence)
        every_prob = gather(every_prob) if every_prob is not None else None
        chosen_probs = gather(chosen_probs) if chosen_probs is not None else None
    total = labels.numel()
    matrix = confusion_matrix(labels, top[:, 0], width)  # (true, predicted)
    scores = class_scores(matrix.numpy())
    out: dict[str, Any] = {"top1": 100.0 * (top[:, 0] == labels).sum().item() / total,
                           "top5": 100.0 * (top == labels[:, None]).any(1).sum().item() / total,
                           "eval_loss": loss.sum().item() / total,
                           "balanced_accuracy": scores["balanced_accuracy"], "macro_f1": scores["macro_f1"]}
    binned = calibration_bins(confidence.cpu().numpy(), (top[:, 0] == labels).cpu().numpy())
    out["ece"] = binned.pop("ece")
    out.update(temperature)
    if given is not None:  # fitted on other images: the calibration it gives these
        out.update(scaled_ece=calibration_bins(parts[2].cpu().numpy(), (top[:, 0] == labels).cpu().numpy())["ece"],
                   scaled_eval_loss=parts[3].mean().item())
    if confusion:
        out["calibration"] = binned  # each confidence bin's images, confidence and accuracy
    if every_prob is not None:
        auc = auc_scores(every_prob.cpu().numpy(), labels.cpu().numpy())
        out["roc_auc"] = auc["roc_auc"]
        if confusion:
            out["per_class_auc"] = auc["per_class_auc"]
    else:
        _unranked(counted, width)
    if confusion:
        out["confusion"] = matrix.tolist()
        out.update({key: scores[key] for key in ("per_class_recall", "per_class_precision", "per_class_f1")})
    if keep:
        out.update(labels=labels.cpu(), top=top.cpu(), top_probs=chosen_probs.cpu())
    return out


@functools.cache
def _unranked(images: int, classes: int) -> None:  # once a process for each size
    log.info("ROC-AUC not measured: %d images x %d classes are more probabilities than an evaluation keeps (%s)",
             images, classes, f"{MAX_KEPT_PROBABILITIES:,}")


def _multilabel_metrics(labels: torch.Tensor, probs: torch.Tensor, loss: torch.Tensor, per_class: bool,
                        keep: bool, thresholds: list[float] | None = None) -> dict[str, Any]:
    """:func:`evaluate`'s measures of images with several classes each: labels and probabilities (N, classes) of all
    the images, on the CPU, each image's binary cross-entropy (N,) averaged over the classes; ``f1_thresholds``
    (without ``thresholds`` given): each class's threshold of the best F1 on these images (kept in model-best.pth,
    not logged: :func:`evaluate_after_epoch`)."""
    binned = multilabel_calibration(probs.numpy(), labels.numpy())
    out = {**multilabel_scores(probs.numpy(), labels.numpy(), per_class), "eval_loss": loss.sum().item() / len(loss),
           "ece": binned.pop("ece")}
    if per_class:
        out["calibration"] = binned
    if thresholds is None:  # fitted here (the images a run chooses on), unless these are measured at others'
        out["f1_thresholds"] = f1_thresholds(probs.numpy(), labels.numpy())
    else:  # fitted on other images (held-out ones): the F1 they give here
        tuned = multilabel_scores(probs.numpy(), labels.numpy(), thresholds=thresholds)
        out.update({f"tuned_{key}": tuned[key] for key in ("macro_f1", "micro_f1", "exact_match")})
    if keep:
        out.update(labels=labels, probs=probs)
    return out


def _scaling(logits: torch.Tensor, labels: torch.Tensor, given: float | None, sums: list, counts: list,
             probs: list, losses: list) -> None:
    """One batch's part of temperature scaling: its images' NLL at each temperature of the grid and, with a
    temperature ``given``, the probabilities and losses at it (lists appended to, on the device)."""
    at_each, terms = nll_by_temperature(logits, labels)
    sums.append(at_each)
    counts.append(terms)
    if given is not None:  # what calibration reads of logits / T, and the loss there
        z = logits.float() / given
        probs.append(top_probability(z) if labels.ndim == 1 else z.sigmoid())  # (B,) or (B, classes)
        losses.append(F.cross_entropy(z, labels, reduction="none") if labels.ndim == 1 else image_losses(z, labels))


def say_labels(multi_label: bool, classes: int, select_by: str) -> None:
    """Say how images of several classes each are learnt and judged (nothing for one class an image)."""
    if multi_label:
        log.info("%d classes, each image of any number of them (data.multi_label): a yes / no a class (binary "
                 "cross-entropy); model-best.pth is the epoch of the best %s", classes, SELECT_BY[select_by])


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


def chosen_on(data: DataConfig) -> dict[str, Any]:
    """The images a run's evaluations measure, on which model-best.pth is chosen and its temperature (and, for
    several classes an image, decision thresholds) fitted: kept in the file, so that `openmae evaluate` knows them."""
    where = {"data": str(Path(data.path).resolve()) if data.path else data.name,
             "split": data.train_split if data.holdout else data.eval_split}
    return {**where, "holdout": data.holdout, "holdout_seed": data.holdout_seed} if data.holdout else where


LABEL_READING = ("label_columns", "uncertain_label", "label_separator")  # how a CSV list's labels were read


def data_record(data: DataConfig) -> dict[str, Any]:
    """What model-best.pth keeps of the data it was trained on: the images it was chosen on (:func:`chosen_on`)
    and how a CSV list's labels were read, where not by default (``labels_read``: `openmae evaluate` reads them so
    again unless told otherwise)."""
    read = {key: getattr(data, key) for key in LABEL_READING if getattr(data, key) not in ((), "", None)}
    return {"chosen_on": chosen_on(data), **({"labels_read": {k: list(v) if isinstance(v, tuple) else v
                                                               for k, v in read.items()}} if read else {})}


class BestKeeper:
    """Writes ``model-best.pth`` when the measure ``select_by`` (top-1, balanced accuracy or macro F1) improves and
    ``model-timm.safetensors`` (timm keys) at the end.

    Its record (the best epoch and its metrics) travels in checkpoints (``state`` / ``load_state``), so that a
    resumed run does not replace ``model-best.pth`` with a worse epoch. ``report``: the prefix of metrics from the
    evaluation split measured beside held-out images (``report_prefix``); they are kept and logged, never chosen on.
    """

    def __init__(self, run_dir: Path, model_config: dict[str, Any], extra: dict[str, Any], report: str = "",
                 select_by: str = "top1") -> None:
        self.run_dir, self.model_config, self.extra, self.report = run_dir, model_config, extra, report
        self.select_by = select_by
        self.best = float("-inf")  # the best epoch's select_by
        self.epoch = 0
        self.metrics: dict[str, float] = {}

    def state(self) -> dict[str, Any]:
        """Its part of a checkpoint's task_state."""
        return {"best": {"select_by": self.select_by, "value": self.best, "epoch": self.epoch,
                         "metrics": dict(self.metrics)}}

    def load_state(self, task_state: dict[str, Any]) -> None:
        """From a checkpoint's task_state; one written before the record travelled has none, and the record
        starts afresh. A run resumed with another ``select_by`` judges the best epoch so far by its own number of
        that measure (epochs evaluated before it are not measured again)."""
        if "best" not in task_state:
            return
        best = task_state["best"]
        self.epoch, self.metrics = int(best["epoch"]), dict(best["metrics"])
        chosen_by = best.get("select_by", "top1")  # records written before the choice had top-1 alone
        self.best = float(best.get("value", best.get("top1")))
        if chosen_by != self.select_by:
            self.best = float(self.metrics.get(self.select_by, float("-inf")))
            log.info("best epoch so far (%d) was chosen by %s; from now on by %s, which it measured %.2f", self.epoch,
                     SELECT_BY[chosen_by], SELECT_BY[self.select_by], self.best)

    def update(self, sd: dict[str, torch.Tensor], metrics: dict[str, float], epoch: int, final: bool,
               write: bool = True, kept: dict[str, Any] | None = None) -> dict[str, float]:
        """The record updated with this epoch's ``metrics`` (on every rank alike), and the files written from the
        weights ``sd`` (whole, on the CPU) when ``write`` (the main rank); ``kept``: more for model-best.pth (each
        class's decision threshold)."""
        if self.select_by not in metrics:  # ROC-AUC: measured while images x classes <= MAX_KEPT_PROBABILITIES
            raise ValueError(f"select_by={self.select_by}: the evaluation did not measure it (ROC-AUC is measured while "
                             f"the evaluation's images times its classes stay within {MAX_KEPT_PROBABILITIES:,}); "
                             "choose by top1, balanced_accuracy or macro_f1")
        value = metrics[self.select_by]
        # nan (no class with images of both kinds for ROC-AUC): never an improvement, but the first evaluation is kept
        improved = value > self.best or self.epoch == 0
        if improved:
            self.best, self.epoch, self.metrics = value, epoch, dict(metrics)
        if improved and write:
            save_file({"model": sd, "model_config": self.model_config, "epoch": epoch, "metrics": metrics,
                       **self.extra, **(kept or {})}, self.run_dir / "model-best.pth")
        if final and write:
            # timm reads the tensors (a probe's BatchNorm head folded into its Linear); openmae also the architecture
            # (head counts) and normalisation in the metadata
            save_file(fold_bn_head({k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}),
                      self.run_dir / "model-timm.safetensors",
                      metadata=weights_metadata(self.model_config, self.extra.get("normalization")))
            log.info("exported the final classifier in timm layout to %s", self.run_dir / "model-timm.safetensors")
        lead = headline_measure(metrics)
        out = {**metrics, f"best_{lead}": self.metrics.get(lead, float("nan")), "best_epoch": self.epoch}
        if self.select_by != lead:
            out[f"best_{self.select_by}"] = self.best
        if self.report:
            # nan: the best epoch was evaluated before data.report_eval_split was turned on (a resumed run)
            out[f"best_{self.report}{lead}"] = self.metrics.get(f"{self.report}{lead}", float("nan"))
        return out


def headline_measure(metrics: dict[str, Any]) -> str:
    """The measure an evaluation is first named by: top-1, or mean AP for images of several classes each."""
    return "top1" if "top1" in metrics or "mean_ap" not in metrics else "mean_ap"


def headline(metrics: dict[str, Any]) -> str:
    """``top-1 76.10 top-5 98.20``, or ``mean AP 61.20 ROC-AUC 84.00`` for images of several classes each."""
    if headline_measure(metrics) == "top1":
        return f"top-1 {metrics['top1']:.2f} top-5 {metrics['top5']:.2f}"
    return f"mean AP {metrics['mean_ap']:.2f} ROC-AUC {metrics['roc_auc']:.2f}"


def evaluate_after_epoch(run: Run, epoch: int, every: int, model: nn.Module,
                         evaluate_fn: Callable[[DistInfo], dict[str, float]], best: BestKeeper,
                         extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every ``every`` epochs and at the end, every rank evaluates its part of the images (``evaluate_fn``, which
    returns the metrics of all on every rank); the main rank keeps the best weights; all ranks wait for it."""
    final = epoch == run.train.epochs
    if not (epoch % every == 0 or final):
        return {}
    metrics = evaluate_fn(run.info)
    # the images chosen on fit what model-best.pth keeps with the weights: several classes an image, each class's
    # threshold of the best F1
    # (a list a class: not logged; the report split's are not kept, those would be fitted on the images it reports)
    fitted = {key: metrics.pop(key) for key in list(metrics) if key.endswith("f1_thresholds")}
    kept = {"thresholds": fitted["f1_thresholds"]} if "f1_thresholds" in fitted else {}
    if "temperature" in metrics:  # and the temperature that calibrates them (logged too: one number)
        kept["temperature"] = metrics["temperature"]
    # whole weights on the main rank's CPU: a collective under FSDP, where each rank holds a part of every tensor
    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    out = {**best.update(sd, metrics, epoch, final, write=run.info.is_main, kept=kept), **(extra or {})}
    # the measure model-best.pth is chosen by, when it is not top-1: this epoch's, and the best's
    lead = headline_measure(metrics)
    shown = {"top1", "top5"} if lead == "top1" else {"mean_ap", "roc_auc"}  # what headline() says
    chosen = "" if best.select_by in shown else f" {SELECT_BY[best.select_by]} {out[best.select_by]:.2f}"
    best_of = "" if best.select_by == lead else f"{SELECT_BY[best.select_by]} "
    if run.info.is_main and best.report:
        split = best.report[:-1]
        log.info("epoch %d: held-out %s%s, %s %s %.2f (best held-out %s%.2f at epoch %d, whose %s %s is %.2f)", epoch,
                 headline(out), chosen, split, SELECT_BY[lead], out[f"{best.report}{lead}"], best_of, best.best,
                 out["best_epoch"], split, SELECT_BY[lead], out[f"best_{best.report}{lead}"])
    elif run.info.is_main:
        log.info("epoch %d: %s%s (best %s%.2f, epoch %d)", epoch, headline(out), chosen, best_of, best.best,
                 out["best_epoch"])
    wait_for_main(run.info)
    return out


def evaluate_share(model: nn.Module, source: ImageSource, batches_for: Callable[[ImageSource], Iterable[Batch]],
                   device: torch.device, info: DistInfo, amp_dtype: torch.dtype | None = None, confusion: bool = False,
                   flip: bool = False, what: str = "evaluation", keep: bool = False,
                   fitted: dict[str, Any] | None = None) -> dict[str, Any]:
    """``evaluate`` over every image of ``source``, each rank of a torchrun job taking its part (``share_of``):
    ``batches_for(images)`` makes the batches of the images given. Every rank returns the metrics of all; how far
    it came is reported as ``what``."""
    if not info.enabled:
        return evaluate(model, batches_for(source), device, amp_dtype, confusion, flip, what=what, total=len(source),
                        keep=keep, fitted=fitted)
    same_buffers(model, info)  # one model measured: the main rank's (BatchNorm statistics)
    part = part_of(source, info)[0]
    return evaluate(model, batches_for(part), device, amp_dtype, confusion, flip,
                    gather=functools.partial(gather_rows, count=len(source), info=info), what=what, total=len(part),
                    keep=keep, fitted=fitted, all_images=len(source))


def fitted_on_held_out(metrics: dict[str, Any]) -> dict[str, Any]:
    """What an evaluation of held-out images fitted, for measuring the report split at it (:func:`evaluate`'s
    ``fitted``): the temperature, and each class's threshold for several classes an image."""
    return {key: metrics[name] for key, name in (("temperature", "temperature"), ("thresholds", "f1_thresholds"))
            if name in metrics}


def labels_and_images(batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return batch.images.to(device, non_blocking=True), batch.labels.to(device, non_blocking=True)
