"""Shifted views of the patch grid, for distance maps finer than a patch (``evaluate.map_views``, ``visualize
--map-views``). A ViT sees an image in patches, so a distance map has one value a patch: a small defect that lies
across patch borders is split between several patches and diluted in each. With ``views`` = k x k, the image is
also read with the grid moved by 1/k of a patch down, right and both (k = 2: half a patch, 4 views), each view is
searched against the reference read with the same shift, each view's map is put back where the view saw it, and
the views' maps are averaged: a map on a finer grid, each cell the mean of the k x k patches that covered it (cells
of half a patch for 4 views of an even patch; a pixel where the shifts are odd). The views cost k x k passes of the
encoder and searches, of the reference and the images.

On Fashion-MNIST images with a pasted CIFAR-10 square, four views raised the pixel ROC-AUC and the per-region
overlap (PRO) of three MAEs' distance maps by 2.2-4.3 and 3.0-8.1 points, and the images' ROC-AUC by 2.0-2.3, for
twice the command's time (docs/results.md).

A view shifted by (dy, dx) pixels is the image moved up and left by that much, the rows and columns it uncovers at
the bottom and right filled by reflection (the same for the reference, so that edges are compared with edges). The
cells a view's patches do not reach (the first dy rows, dx columns) are the mean of the views that reach them (the
grid as it is reaches every cell).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def views_side(views: int) -> int:
    """k of ``views`` = k x k views; refused where ``views`` is no square."""
    k = math.isqrt(max(views, 0))
    if views < 1 or k * k != views:
        raise ValueError(f"map views {views}: give a square number of views of the patch grid, k x k (1: the grid as "
                         "it is; 4: also moved by half a patch; 9: by thirds)")
    return k


def grid_steps(views: int, patch: tuple[int, int]) -> int:
    """k of ``views`` = k x k views of a grid of ``patch`` (ph, pw) pixels; refused where ``views`` is no square
    or k exceeds a patch side (two views would be shifted alike)."""
    k = views_side(views)
    if k > min(patch):
        raise ValueError(f"map views {views}: the grid of {patch[0]}x{patch[1]}-pixel patches moved by 1/{k} of a "
                         f"patch; give at most {min(patch) ** 2} views (a pixel apart)")
    return k


def view_shifts(views: int, patch: tuple[int, int]) -> list[tuple[int, int]]:
    """The (down, right) shifts in whole pixels of the ``views`` views of a grid of ``patch`` pixels, the grid as it
    is first: (0, 0), (0, pw // k), ..., ((k-1) ph // k, (k-1) pw // k)."""
    k = grid_steps(views, patch)
    return [(a * patch[0] // k, b * patch[1] // k) for a in range(k) for b in range(k)]


def cell_size(views: int, patch: tuple[int, int]) -> tuple[int, int]:
    """The side (ch, cw) in pixels of the cells of the finer grid the views' maps are averaged on: the largest that
    divides the patch and every shift (half a patch for 4 views of an even patch; a pixel for 4 views of a 7-pixel
    patch, shifted by 3)."""
    shifts = view_shifts(views, patch)
    return (math.gcd(patch[0], *(a for a, _ in shifts)), math.gcd(patch[1], *(b for _, b in shifts)))


def shifted(imgs: torch.Tensor, shift: tuple[int, int]) -> torch.Tensor:
    """``imgs`` (N, C, H, W) moved up by ``shift[0]`` and left by ``shift[1]`` pixels, the uncovered rows and columns
    at the bottom and right reflected: (N, C, H, W), pixel (y, x) the image's (y + dy, x + dx)."""
    dy, dx = shift
    if not dy and not dx:
        return imgs
    return F.pad(imgs, (0, dx, 0, dy), mode="reflect")[..., dy:, dx:]


def put_back(values: torch.Tensor, shift: tuple[int, int], patch: tuple[int, int], cell: tuple[int, int]
             ) -> torch.Tensor:
    """A view's patch values (N, h, w) on the finer grid of ``cell``-pixel cells of the unshifted image
    (N, h ph / ch, w pw / cw): each patch's value on the cells it covered, NaN on those its grid does not reach (the
    first shift / cell rows and columns)."""
    a, b = shift[0] // cell[0], shift[1] // cell[1]  # the shift in cells
    cells = values.repeat_interleave(patch[0] // cell[0], 1).repeat_interleave(patch[1] // cell[1], 2)  # its frame
    return F.pad(cells, (b, 0, a, 0), value=float("nan"))[:, : cells.shape[1], : cells.shape[2]]


def averaged(maps: list[torch.Tensor]) -> torch.Tensor:
    """The views' maps (N, H', W') each, :func:`put_back`'s, averaged cell by cell over the views that reach the
    cell (the first view, the grid as it is, reaches every one)."""
    return torch.stack(maps).nanmean(0)
