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

# images x classes whose probabilities an evaluation keeps for ROC-AUC: 256 MiB of float32, which ImageNet-1k's 50,000
# validation images x 1,000 classes fit (200 MB); beyond it (ImageNet-21k's classes) ROC-AUC is left out
MAX_KEPT_PROBABILITIES = 1 << 26


def keeps_probabilities(images: int | None, classes: int) -> bool:
    """Whether an evaluation of ``images`` images (all ranks' together; None: not known beforehand) over ``classes``
    classes keeps every image's class probabilities, which ROC-AUC needs."""
    return images is None or images * classes <= MAX_KEPT_PROBABILITIES


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """The area under the ROC curve of ``scores`` (N,) for the images where ``positive`` (N,) is true; nan without
    positives or without negatives."""
    return _sorted_auc(np.sort(scores), scores[positive])


def auc_scores(probs: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """``roc_auc`` (percent; nan where no class has both kinds of images) and ``per_class_auc`` (percent, None for a
    class without positive or negative images) of probabilities ``probs`` (N, C) against ``labels`` (N,): each
    class's :func:`roc_auc`, its columns sorted in one call (ImageNet's 1,000 columns in seconds)."""
    columns = np.ascontiguousarray(probs.T)  # (C, N)
    columns.sort(axis=1)
    per_class = [_sorted_auc(columns[c], probs[labels == c, c]) for c in range(probs.shape[1])]
    measured = [a for a in per_class if not np.isnan(a)]  # two classes: both equal (class 0's scores are 1 - p)
    return {"roc_auc": 100.0 * float(np.mean(measured)) if measured else float("nan"),
            "per_class_auc": [None if np.isnan(a) else 100.0 * a for a in per_class]}


def _sorted_auc(ordered: np.ndarray, positives: np.ndarray) -> float:
    """:func:`roc_auc` of the scores ``ordered`` (N,), ascending, whose ``positives`` (P,) are the positive images':
    each positive's 1-based rank among all N, ties sharing their average rank (scipy's ``rankdata``), is (scores
    below it + scores up to it + 1) / 2, looked up for the positives alone."""
    pos, neg = len(positives), len(ordered) - len(positives)
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = (np.searchsorted(ordered, positives, "left") + np.searchsorted(ordered, positives, "right") + 1) / 2.0
    return float((ranks.sum() - pos * (pos + 1) / 2) / (pos * neg))
