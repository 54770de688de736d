"""Which patches the encoder sees.

Every strategy produces per-sample *noise* of shape (N, L); one shared routine turns noise into a
:class:`MaskPlan` exactly as the official MAE ``random_masking``: argsort the noise, keep the first
``int(L * (1 - mask_ratio))`` indices, ``ids_restore = argsort(ids_shuffle)``, mask 1 = removed.
Strategies differ only in the noise they draw (uniform, block-structured, grid-structured), so the keep
count is always the same for every sample of a batch and the encoder input stays a dense tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class MaskPlan:
    """ids_keep (N, K) visible patch indices; ids_restore (N, L) unshuffle index; mask (N, L), 1 = removed."""

    ids_keep: torch.Tensor
    ids_restore: torch.Tensor
    mask: torch.Tensor


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """Patches kept for the encoder: ``int(L * (1 - mask_ratio))`` as the official code."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return int(num_patches * (1 - mask_ratio))


def plan_from_noise(noise: torch.Tensor, mask_ratio: float) -> MaskPlan:
    """Official MAE masking from given noise (N, L): the lowest noise values are kept."""
    n, length = noise.shape
    len_keep = num_visible(length, mask_ratio)
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small is keep, large is remove
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    mask = torch.ones(n, length, device=noise.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)  # back to the original patch order
    return MaskPlan(ids_keep=ids_keep, ids_restore=ids_restore, mask=mask)


def covering_noise(batch: int, length: int, mask_ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise (P, N, L) for P passes whose removed patches together cover every patch of each image once or more: a
    random order of the L patches cut into runs of R = L - ``num_visible`` (the last run wrapping round to the
    start), pass p removing run p; P = ceil(L / R) (2 at the paper's 0.75). Each pass removes R patches, as
    :func:`plan_from_noise` of any noise at this ratio does, so each pass is an ordinary forward of the model."""
    removed = length - num_visible(length, mask_ratio)
    if removed == 0:
        raise ValueError(f"mask_ratio={mask_ratio} removes none of {length} patches: nothing to reconstruct")
    rank = torch.argsort(torch.argsort(torch.rand(batch, length, generator=generator), dim=1), dim=1)  # (N, L)
    passes = []
    for p in range(math.ceil(length / removed)):
        place = (rank - p * removed) % length  # (N, L): 0 .. R-1 for this pass's run
        passes.append((place < removed).float() + place.float() / length)  # removed >= 1 > kept
    return torch.stack(passes)


class MaskingStrategy(Protocol):
    """Draws noise (N, L) for a patch grid; lower noise = more likely to stay visible."""

    def noise(
        self, batch: int, grid: tuple[int, int], mask_ratio: float,
        generator: torch.Generator | None = None, device: torch.device | str | None = None,
    ) -> torch.Tensor: ...


class RandomMasking:
    """Uniform random masking of the paper: i.i.d. uniform noise per patch."""

    def noise(self, batch, grid, mask_ratio, generator=None, device=None) -> torch.Tensor:
        return torch.rand(batch, grid[0] * grid[1], generator=generator, device=device)


class BlockMasking:
    """BEiT-style block-wise masking: rectangles of random size and aspect are removed until the target
    count is reached (blocks of 16 patches or more, aspect ratio 0.3-3.3, as BEiT).

    Patches inside blocks get noise in [1, 2), the rest [0, 1); the shared argsort then keeps exactly
    ``int(L * (1 - ratio))`` patches, preferring the unblocked ones.
    """

    def __init__(self, min_block: int = 16, min_aspect: float = 0.3, max_aspect: float | None = None) -> None:
        self.min_block = min_block
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect or 1 / min_aspect))

    def _one(self, gh: int, gw: int, target: int, gen: torch.Generator | None) -> torch.Tensor:
        blocked = torch.zeros(gh, gw, dtype=torch.bool)
        for _ in range(100 * gh * gw):  # bounded: stops once enough patches are covered
            covered = int(blocked.sum())
            if covered >= target:
                break
            area = self.min_block + float(torch.rand(1, generator=gen)) * max(target - covered - self.min_block, 0)
            lo, hi = self.log_aspect
            aspect = math.exp(lo + float(torch.rand(1, generator=gen)) * (hi - lo))
            h = max(1, min(gh, int(round(math.sqrt(area * aspect)))))
            w = max(1, min(gw, int(round(math.sqrt(area / aspect)))))
            top = int(torch.randint(0, gh - h + 1, (1,), generator=gen))
            left = int(torch.randint(0, gw - w + 1, (1,), generator=gen))
            blocked[top : top + h, left : left + w] = True
        return blocked.flatten()

    def noise(self, batch, grid, mask_ratio, generator=None, device=None) -> torch.Tensor:
        gh, gw = grid
        target = gh * gw - num_visible(gh * gw, mask_ratio)
        blocked = torch.stack([self._one(gh, gw, target, generator) for _ in range(batch)])  # (N, L)
        jitter = torch.rand(batch, gh * gw, generator=generator)
        return (blocked.float() + jitter).to(device)


class GridMasking:
    """Regular grid masking (the paper's "grid" ablation): keep one patch of every ``stride x stride``
    cell, at a per-sample random offset. ``stride`` defaults to the one implied by the ratio
    (0.75 -> 2, 8/9 -> 3); cells that do not divide the grid are filled by the argsort in random order.
    """

    def __init__(self, stride: int | None = None) -> None:
        self.stride = stride

    def noise(self, batch, grid, mask_ratio, generator=None, device=None) -> torch.Tensor:
        gh, gw = grid
        stride = self.stride or max(2, round(1 / math.sqrt(max(1e-6, 1 - mask_ratio))))
        rows = torch.arange(gh).view(gh, 1)
        cols = torch.arange(gw).view(1, gw)
        offsets = torch.randint(0, stride, (batch, 2), generator=generator)
        on_grid = torch.stack(
            [((rows % stride == oy) & (cols % stride == ox)).flatten() for oy, ox in offsets.tolist()]
        )  # (N, L), True = kept position of the grid
        jitter = torch.rand(batch, gh * gw, generator=generator)
        return ((~on_grid).float() + jitter).to(device)


STRATEGIES: dict[str, type] = {"random": RandomMasking, "block": BlockMasking, "grid": GridMasking}


def make_strategy(name: str) -> MaskingStrategy:
    """Strategy by name: ``random`` (paper default), ``block`` (BEiT) or ``grid``."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown masking strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    return STRATEGIES[name]()
