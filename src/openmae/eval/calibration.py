"""Calibration: whether a classifier's probabilities mean what they say (of the images it calls 90% sure, are 90%
right?), which a medical or screening user reads before trusting a probability. Expected calibration error (Guo et
al., "On Calibration of Modern Neural Networks", 2017): the images binned by confidence into 15 equal-width bins of
(0, 1], the mean over images of each bin's gap between its accuracy and its mean confidence,
``sum_m |B_m| / n * |acc(B_m) - conf(B_m)|``. One class an image: the confidence is the top class's probability and
accuracy whether it is the label. Several an image: every (image, class) pair with a known label is one
yes / no, its probability against its label (the pooled binary ECE). A few lines of numpy: torchmetrics'
``CalibrationError`` is the same definition, not a dependency worth adding for it."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

BINS = 15


def top_probability(logits: torch.Tensor) -> torch.Tensor:
    """(B,): the softmax probability of each row's top class of ``logits`` (B, C), without the (B, C) softmax."""
    return (logits.amax(1) - logits.logsumexp(1)).exp()


def calibration_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> dict[str, Any]:
    """Each bin's ``count``, mean ``confidence`` and ``accuracy`` (nan where empty) and ``ece`` (percent; nan without
    images) of ``confidence`` (N,) in [0, 1] and ``correct`` (N,) (0 / 1: right, or of the class)."""
    confidence, correct = np.asarray(confidence, np.float64), np.asarray(correct, np.float64)
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)  # (0, 1/15] -> 0 ... ; 0 -> 0
    count = np.bincount(which, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(which, weights=confidence, minlength=bins) / count
        acc = np.bincount(which, weights=correct, minlength=bins) / count
    ece = float(np.nansum(count * np.abs(acc - conf)) / count.sum()) * 100.0 if count.sum() else float("nan")
    return {"count": count.astype(np.int64).tolist(), "confidence": conf.tolist(), "accuracy": acc.tolist(), "ece": ece}


def multilabel_calibration(probs: np.ndarray, targets: np.ndarray, bins: int = BINS) -> dict[str, Any]:
    """:func:`calibration_bins` of every known (image, class) pair of ``probs`` (N, C) against ``targets`` (N, C) of
    0 / 1 (nan: unknown, left out)."""
    known = ~np.isnan(targets)
    return calibration_bins(probs[known], targets[known] > 0.5, bins)
