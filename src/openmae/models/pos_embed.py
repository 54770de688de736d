"""Fixed 2-D sin-cos position embeddings (as the official MAE) and bicubic interpolation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(M,) float64 positions -> (M, dim) with [sin | cos] halves."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding width must be even, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # (dim/2,)
    out = positions.reshape(-1)[:, None] * omega[None, :]  # (M, dim/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(dim: int, grid: tuple[int, int], cls_token: bool = True) -> torch.Tensor:
    """Sin-cos table of shape (1, [1 +] gh*gw, dim); the cls slot (first row) is zero.

    Same numbers as the official ``get_2d_sincos_pos_embed``: the first half of the channels encodes the
    column (w) coordinate and the second half the row (h) coordinate; generalised to gh != gw.
    """
    gh, gw = grid
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding width must be a multiple of 4, got {dim}")
    ww, hh = torch.meshgrid(
        torch.arange(gw, dtype=torch.float64), torch.arange(gh, dtype=torch.float64), indexing="xy"
    )  # each (gh, gw)
    emb = torch.cat([_sincos_1d(dim // 2, ww), _sincos_1d(dim // 2, hh)], dim=1)  # (gh*gw, dim)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=torch.float64), emb], dim=0)
    return emb.float().unsqueeze(0)


def interpolate_pos_embed(
    pos_embed: torch.Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int] | None = None, num_prefix: int = 1
) -> torch.Tensor:
    """Resize a (1, prefix + gh*gw, D) position table to ``new_grid`` with bicubic interpolation.

    Prefix tokens (cls) are kept as they are. ``old_grid`` defaults to a square grid.
    """
    prefix, grid_tokens = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    n_old = grid_tokens.shape[1]
    if old_grid is None:
        side = math.isqrt(n_old)
        if side * side != n_old:
            raise ValueError(f"position table has {n_old} grid tokens, not a square; pass old_grid=(gh, gw)")
        old_grid = (side, side)
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    dim = pos_embed.shape[-1]
    grid_tokens = grid_tokens.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)  # (1, D, gh, gw)
    grid_tokens = F.interpolate(grid_tokens.float(), size=tuple(new_grid), mode="bicubic", align_corners=False)
    grid_tokens = grid_tokens.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid_tokens], dim=1)
