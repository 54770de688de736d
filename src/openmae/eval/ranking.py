"""ROC-AUC from class probabilities: the measure of binary medical tasks (is this lesion malignant?), where it
judges the model's ranking of images regardless of a decision threshold. Per class one-vs-rest, averaged over the
classes that have both positive and negative images (scikit-learn's ``roc_auc_score(multi_class="ovr",
average="macro")``, which refuses a class without images instead); for two classes, both classes' AUC, which
are equal. Computed as the
Mann-Whitney statistic with average ranks for ties, equal to the ROC curve's area; a few lines of numpy, not a
dependency on scikit-learn or scipy."""

from __future__ import annotations

from typing import Any

import numpy as np

MAX_CLASSES = 100  # evaluations keep every image's probabilities up to this many classes (ImageNet's would be 200 MB)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values`` (N,), ties sharing their average rank (scipy's ``rankdata``)."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.r_[0, np.flatnonzero(ordered[1:] != ordered[:-1]) + 1]  # where each run of equal values begins
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """The area under the ROC curve of ``scores`` (N,) for the images where ``positive`` (N,) is true; nan without
    positives or without negatives."""
    pos = int(positive.sum())
    neg = len(positive) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = average_ranks(scores)
    return float((ranks[positive].sum() - pos * (pos + 1) / 2) / (pos * neg))


def auc_scores(probs: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """``roc_auc`` (percent; nan where no class has both kinds of images) and ``per_class_auc`` (percent, None for a
    class without positive or negative images) of probabilities ``probs`` (N, C) against ``labels`` (N,)."""
    per_class = [roc_auc(probs[:, c], labels == c) for c in range(probs.shape[1])]
    measured = [a for a in per_class if not np.isnan(a)]  # two classes: both equal (class 0's scores are 1 - p)
    return {"roc_auc": 100.0 * float(np.mean(measured)) if measured else float("nan"),
            "per_class_auc": [None if np.isnan(a) else 100.0 * a for a in per_class]}
