"""Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", 2017): the logits divided by one
number T, fitted to the least negative log-likelihood on held-out images, make a classifier's probabilities
calibrated without changing its ranking (top-1, AP and AUC stay). Several classes an image: each class's sigmoid
of its logit / T, the binary cross-entropy of the known labels.

The fit reads no logits kept in memory: each image's NLL at each temperature of a grid (121 points from 0.05 to 20,
5% apart) is summed as the batches go by, so an evaluation of any size and any number of classes costs (images,
121) numbers, gathered from torchrun's ranks as any per-image row. NLL is convex in 1 / T, so the grid's minimum is
within 5% of the exact one."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

GRID = torch.logspace(math.log10(0.05), math.log10(20.0), 121, dtype=torch.float64)  # the temperatures tried


def nll_by_temperature(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's summed negative log-likelihood at each temperature of :data:`GRID` (B, 121) float64 and its
    number of terms (B,): 1 for a class index (softmax cross-entropy), its known labels for rows of several classes
    (binary cross-entropy; nan: unknown, left out)."""
    logits = logits.float()
    grid = GRID.to(logits.device)
    if labels.ndim == 1:  # -log softmax(z / T)[y] = logsumexp(z / T) - z_y / T
        chosen = logits.gather(1, labels[:, None]).squeeze(1).double()  # (B,)
        spread = torch.stack([torch.logsumexp(logits / float(t), 1) for t in GRID]).T.double()  # (B, G)
        return spread - chosen[:, None] / grid, torch.ones(len(logits), dtype=torch.float64, device=logits.device)
    known = ~labels.isnan()
    rows = labels.nan_to_num(0.0)
    sums = torch.stack([(F.binary_cross_entropy_with_logits(logits / float(t), rows, reduction="none") * known).sum(1)
                        for t in GRID]).T.double()  # (B, G)
    return sums, known.sum(1).double()


def best_temperature(sums: torch.Tensor, counts: torch.Tensor) -> float:
    """The temperature of the grid with the least mean negative log-likelihood over all images' ``sums`` (N, G) and
    ``counts`` (N,); 1 without any term."""
    total = counts.sum()
    if not total:
        return 1.0
    return float(GRID[int(torch.argmin(sums.sum(0).cpu() / float(total)))])

