"""Measures of classifiers whose images may have several classes (``data.multi_label``: a chest X-ray's findings, a
satellite tile's land covers), each class a yes/no of its own: mean average precision (the field's headline: ranking
of each class's images, no threshold), ROC-AUC per class, and at the threshold of a probability of one half (or each
class's own, fitted on held-out images to maximise its F1), F1 per class, its macro and micro means and the images
whose every class is right (exact match).

Definitions are scikit-learn's: ``average_precision_score`` (the precision at each distinct score weighted by the
recall it adds, no interpolation), ``roc_auc_score``, ``f1_score(average="macro" / "micro", zero_division=0)``,
``accuracy_score`` of the label sets; the means are over the classes that have positive images (mean AP, as
scikit-learn gives 0 for a class without any) or either kind (ROC-AUC). A few lines of numpy, as in
:mod:`openmae.eval.ranking`, not a dependency on scikit-learn."""

from __future__ import annotations

from typing import Any

import numpy as np

from openmae.eval.ranking import roc_auc

THRESHOLD = 0.5  # a class is predicted where its probability is above this (its logit above 0)


def precision_recall(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall (each (T,)) of calling the images of ``scores`` (N,) at least each distinct score, highest
    first, positive, for those where ``positive`` (N,) is true (scikit-learn's ``precision_recall_curve``, reversed
    and without its final point of recall 0); recall is nan without positives."""
    return _curve(scores, positive)[1:]


def _curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct scores (T,), highest first, and the precision and recall of calling those at least each one
    positive."""
    order = np.argsort(-scores, kind="stable")
    ordered, hits = scores[order], positive[order].astype(np.float64)
    last = np.r_[np.flatnonzero(ordered[1:] != ordered[:-1]), len(ordered) - 1]  # each distinct score's last image
    found = np.cumsum(hits)[last]
    with np.errstate(divide="ignore", invalid="ignore"):
        return ordered[last], found / (last + 1), found / hits.sum()


def f1_thresholds(probs: np.ndarray, targets: np.ndarray) -> list[float]:
    """Each class's decision threshold (C,) that maximises its F1 on these images (a class is predicted where its
    probability is above it): halfway between the lowest probability called positive and the next lower one (or just
    below it when every image is called positive); one
    half for a class without a positive (known) image. Fitted on held-out images, they lift F1 and exact match over
    one half's for classes whose probabilities are not calibrated (rare ones, weighed losses)."""
    known = ~np.isnan(targets)  # (N, C); nan: unknown (data.uncertain_label=ignore)
    out = []
    for c in range(probs.shape[1]):
        scores, positive = probs[known[:, c], c].astype(np.float64), targets[known[:, c], c] > 0.5
        if not positive.any():
            out.append(THRESHOLD)
            continue
        distinct, precision, recall = _curve(scores, positive)
        with np.errstate(divide="ignore", invalid="ignore"):
            f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
        k = int(np.argmax(f1))  # the highest threshold of the best F1
        # every image called positive: just below the lowest probability
        out.append(float((distinct[k] + distinct[k + 1]) / 2 if k + 1 < len(distinct) else
                         np.nextafter(distinct[k], -np.inf)))
    return out


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """The average precision of ranking the images by ``scores`` (N,) for those where ``positive`` (N,) is true:
    the sum over distinct scores, highest first, of the precision there times the recall gained; nan without
    positives."""
    if not positive.any():
        return float("nan")
    precision, recall = precision_recall(scores, positive)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _pct(values: list[float]) -> list[float | None]:
    return [None if np.isnan(v) else 100.0 * float(v) for v in values]


def _mean(values: list[float]) -> float:
    kept = [v for v in values if not np.isnan(v)]
    return 100.0 * float(np.mean(kept)) if kept else float("nan")


def multilabel_scores(probs: np.ndarray, targets: np.ndarray, per_class: bool = False,
                      thresholds: np.ndarray | list[float] | None = None) -> dict[str, Any]:
    """``mean_ap``, ``roc_auc``, ``macro_f1``, ``micro_f1`` and ``exact_match`` (percent) of probabilities ``probs``
    (N, C) against ``targets`` (N, C) of zeros and ones; with ``per_class``, each class's ``per_class_ap``,
    ``per_class_auc``, ``per_class_precision``, ``per_class_recall``, ``per_class_f1`` (percent; None where a class
    has no images to measure it on) and ``per_class_images`` (its positive images). A nan target is an unknown
    label (``data.uncertain_label=ignore``): each class is measured on the images whose label of it is known, and
    an image is an exact match when its every known label is. ``thresholds`` (C,): each class's decision threshold
    for F1, precision, recall and exact match (:func:`f1_thresholds`), instead of one half."""
    known = ~np.isnan(targets)  # (N, C)
    cut = THRESHOLD if thresholds is None else np.asarray(thresholds, dtype=np.float64)[None, :]
    truth, predicted = (targets > 0.5) & known, (probs > cut) & known  # (N, C)
    ap = [average_precision(probs[known[:, c], c], truth[known[:, c], c]) for c in range(probs.shape[1])]
    auc = [roc_auc(probs[known[:, c], c], truth[known[:, c], c]) for c in range(probs.shape[1])]
    hit = (truth & predicted).sum(0).astype(np.float64)  # (C,)
    true, said = truth.sum(0).astype(np.float64), predicted.sum(0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(true > 0, hit / true, np.nan)
        precision = np.where(said > 0, hit / said, np.where(true > 0, 0.0, np.nan))
        f1 = np.where(true + said > 0, 2 * hit / (true + said), np.nan)  # 2TP / (2TP + FP + FN)
    every = 2 * hit.sum() + (said - hit).sum() + (true - hit).sum()
    out: dict[str, Any] = {"mean_ap": _mean(ap), "roc_auc": _mean(auc), "macro_f1": _mean(list(f1)),
                           "micro_f1": 100.0 * float(2 * hit.sum() / every) if every else float("nan"),
                           "exact_match": 100.0 * float((truth == predicted).all(1).mean()) if len(truth) else
                           float("nan")}
    if per_class:
        out.update(per_class_ap=_pct(ap), per_class_auc=_pct(auc), per_class_precision=_pct(list(precision)),
                   per_class_recall=_pct(list(recall)), per_class_f1=_pct(list(f1)),
                   per_class_images=[int(t) for t in true])
    return out
