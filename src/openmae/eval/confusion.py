"""What a confusion matrix says beyond top-1 (rows: true class, columns: predicted): each class's recall, precision
and F1, and their means over the classes, balanced accuracy (the mean recall) and macro F1: the measures of
imbalanced datasets (medical, remote sensing), where top-1 follows the largest class. Their definitions are
scikit-learn's (``balanced_accuracy_score``, ``f1_score(average="macro")``, ``zero_division=0``), computed here from
the matrix the evaluation already has: a few lines of arithmetic are not worth a dependency on scikit-learn."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def confusion_matrix(labels: torch.Tensor, predicted: torch.Tensor, classes: int) -> torch.Tensor:
    """(classes, classes) counts on the CPU, rows the true class, columns the predicted one, of ``labels`` and
    ``predicted`` (N,)."""
    return torch.bincount((labels * classes + predicted).cpu(), minlength=classes * classes).view(classes, classes)


def class_scores(confusion: list[list[int]] | np.ndarray) -> dict[str, Any]:
    """``balanced_accuracy`` and ``macro_f1`` (percent) and per class ``recall`` / ``precision`` / ``f1`` (percent;
    recall None for a class without images, whose precision and F1 count only where it was predicted). The means
    are over the classes the images or the predictions hold (scikit-learn's)."""
    m = np.asarray(confusion, dtype=np.float64)  # (C, C)
    hit, true, predicted = np.diag(m), m.sum(1), m.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(true > 0, hit / true, np.nan)
        precision = np.where(predicted > 0, hit / predicted, 0.0)
        f1 = np.where(true + predicted > 0, 2 * hit / (true + predicted), np.nan)  # 2TP / (2TP + FP + FN)
    seen = true + predicted > 0
    pct = lambda values: [None if np.isnan(v) else 100.0 * float(v) for v in values]
    return {"balanced_accuracy": 100.0 * float(np.nanmean(recall)) if (true > 0).any() else float("nan"),
            "macro_f1": 100.0 * float(f1[seen].mean()) if seen.any() else float("nan"),
            "per_class_recall": pct(recall), "per_class_precision": pct(np.where(seen, precision, np.nan)),
            "per_class_f1": pct(f1)}
