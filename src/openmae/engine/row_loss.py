"""Binary cross-entropy of images of several classes each (``data.multi_label``), a yes / no a class, where a
label may be unknown: a class column's -1 (uncertain) read with ``data.uncertain_label=ignore`` is a nan in the
rows, left out of the loss (CheXpert's "U-Ignore", Irvin et al. 2019) and of the measures
(:func:`openmae.eval.multilabel.multilabel_scores`).

torch's ``binary_cross_entropy_with_logits`` gives nan for a nan target and has no mask argument: the unknown
targets are read as 0 there and their terms weighed by 0 (no gradient either). Without unknown labels each function
equals torch's own mean (to float rounding: a sum over the entries divided by their count).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def known_rows(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``targets`` (B, C) with its unknown (nan) entries read as 0, and the known entries' mask (B, C) float."""
    known = ~targets.isnan()
    return targets.nan_to_num(0.0), known.to(targets.dtype)


def row_loss(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """The mean binary cross-entropy of ``logits`` (B, C) against ``targets`` (B, C) of 0 / 1 (or mixed / smoothed
    values) over the known entries (nan: unknown, left out); 0 when none is known."""
    rows, known = known_rows(targets)
    terms = F.binary_cross_entropy_with_logits(logits, rows, pos_weight=pos_weight, reduction="none")  # (B, C)
    return (terms * known).sum() / known.sum().clamp_min(1.0)


def image_losses(logits: torch.Tensor, targets: torch.Tensor, probs: torch.Tensor | None = None) -> torch.Tensor:
    """Each image's binary cross-entropy (B,) averaged over its known classes (0 for an image of none known): of
    ``logits`` (B, C), or of ``probs`` (B, C) when given (test-time flips average two probabilities)."""
    rows, known = known_rows(targets)
    terms = (F.binary_cross_entropy_with_logits(logits, rows, reduction="none") if probs is None else
             F.binary_cross_entropy(probs, rows, reduction="none"))  # (B, C)
    return (terms * known).sum(1) / known.sum(1).clamp_min(1.0)
