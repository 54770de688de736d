"""Losses for imbalanced classes, the two usual remedies beside drawing the classes alike (``data.balance=classes``):
weighting each class's images (``class_weights=balanced``: scikit-learn's ``compute_class_weight("balanced")``,
images / (classes x the class's images); for several classes an image, each class's positives by its negatives /
positives, binary cross-entropy's ``pos_weight``) and logit adjustment (``logit_adjustment=tau``: Menon et al.,
"Long-tail learning via logit adjustment", 2021: the training loss reads the logits plus tau x log of each class's
share of the training images, so that the plain logits, read at evaluation, are those of balanced classes).

torch's ``cross_entropy`` takes class weights, label smoothing and mixup's soft targets, and ``pos_weight`` is binary
cross-entropy's own: only the class counts and the adjustment are written here.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from openmae.engine.row_loss import row_loss

log = logging.getLogger("openmae.classifier")


def class_balance(labels, num_classes: int, class_weights: str, logit_adjustment: float, smoothing: float = 0.0,
                  names: list[str] | None = None) -> ClassBalance | None:
    """A :class:`ClassBalance` when either remedy is asked for, else None (the task's own loss). ``labels``: the
    training labels, or a callable giving them (read only then)."""
    if class_weights == "none" and not logit_adjustment:
        return None
    return ClassBalance(labels() if callable(labels) else labels, num_classes, class_weights, logit_adjustment,
                        smoothing, names)


class ClassBalance:
    """The balanced loss of one run: class weights or ``pos_weight`` and the logit adjustment, from the training
    labels (class indices (N,), or rows (N, classes) of 0 / 1)."""

    def __init__(self, labels: np.ndarray | torch.Tensor, num_classes: int, class_weights: str = "none",
                 logit_adjustment: float = 0.0, smoothing: float = 0.0, names: list[str] | None = None) -> None:
        labels = torch.as_tensor(np.asarray(labels))
        self.multi = labels.ndim == 2
        self.smoothing = smoothing
        # (classes,); rows: each class's positives and its known labels (a nan is unknown: data.uncertain_label)
        counts = (labels.double().nansum(0) if self.multi else
                  torch.bincount(labels.long(), minlength=num_classes).double())
        known = (~labels.isnan()).double().sum(0) if self.multi else counts.sum()
        absent = [names[c] if names else str(c) for c in torch.nonzero(counts == 0).flatten().tolist()]
        if absent and (class_weights != "none" or logit_adjustment):
            raise ValueError(f"class_weights / logit_adjustment weigh each class by its training images, but "
                             f"{', '.join(absent[:5])} {'has' if len(absent) == 1 else 'have'} none; train without "
                             "them, or give those classes images")
        self.weight = self.pos_weight = self.adjust = None
        self._device: tuple[torch.device, torch.dtype] | None = None  # where the class tensors are (loss)
        if class_weights == "balanced" and self.multi:
            self.pos_weight = (known - counts) / counts  # (classes,): each class's negatives / positives
        elif class_weights == "balanced":
            self.weight = counts.sum() / (num_classes * counts)  # (classes,)
        if logit_adjustment:
            self.adjust = logit_adjustment * torch.log(counts / counts.sum())  # (classes,): tau x log prior
        if self.active:
            shown = self.pos_weight if self.pos_weight is not None else self.weight
            log.info("imbalanced classes: %s%s", "" if shown is None else
                     f"{'positives weighted' if self.multi else 'classes weighted'} {float(shown.min()):.3g} to "
                     f"{float(shown.max()):.3g} (class_weights=balanced)",
                     "" if self.adjust is None else f"{'; ' if shown is not None else ''}logits adjusted by "
                     f"{logit_adjustment} x log prior in training (logit_adjustment)")

    @property
    def active(self) -> bool:
        return any(t is not None for t in (self.weight, self.pos_weight, self.adjust))

    def _on(self, logits: torch.Tensor) -> None:
        """The class tensors moved to the logits' device and dtype once, not a copy (and a host sync) every step."""
        if self._device != (logits.device, logits.dtype):
            self.weight, self.pos_weight, self.adjust = (None if t is None else t.to(logits) for t in
                                                         (self.weight, self.pos_weight, self.adjust))
            self._device = (logits.device, logits.dtype)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The balanced loss of ``logits`` (B, classes) float32 against class indices (B,), soft targets (B,
        classes) (mixup) or, for several classes an image, rows (B, classes); smoothing applies to class indices
        (soft targets and rows come smoothed)."""
        self._on(logits)
        if self.multi:
            return row_loss(logits, targets, pos_weight=self.pos_weight)
        if self.adjust is not None:
            logits = logits + self.adjust
        return F.cross_entropy(logits, targets, weight=self.weight,
                               label_smoothing=self.smoothing if targets.ndim == 1 else 0.0)
