"""Analytic FLOP count of an MAE pretraining step (multiply-add = 2 FLOPs).

Per transformer block over T tokens of width D with MLP ratio r: 2*T*D*(4D + 2rD) for the qkv/proj/MLP
matmuls plus 4*T^2*D for attention scores and their product with values. Training = 3 x forward
(backward costs two matmuls for each forward one). LayerNorms, softmax and GELU are not counted.
"""

from __future__ import annotations

from openmae.models.mae import MAEConfig
from openmae.models.masking import num_visible


def block_flops(tokens: int, dim: int, mlp_ratio: float) -> float:
    return 2 * tokens * dim * (4 * dim + 2 * mlp_ratio * dim) + 4 * tokens**2 * dim


def mae_forward_flops(cfg: MAEConfig, mask_ratio: float = 0.75) -> float:
    """Forward FLOPs for one image: patch embedding of all patches, encoder on 1 + visible tokens,
    decoder on 1 + all tokens, prediction head."""
    length = cfg.grid[0] * cfg.grid[1]
    visible = 1 + num_visible(length, mask_ratio)
    patch_dim = cfg.patch_size**2 * cfg.in_chans
    flops = 2 * length * patch_dim * cfg.embed_dim
    flops += cfg.depth * block_flops(visible, cfg.embed_dim, cfg.mlp_ratio)
    flops += 2 * visible * cfg.embed_dim * cfg.decoder_embed_dim
    flops += cfg.decoder_depth * block_flops(length + 1, cfg.decoder_embed_dim, cfg.mlp_ratio)
    flops += 2 * (length + 1) * cfg.decoder_embed_dim * patch_dim
    return float(flops)


def mae_train_flops(cfg: MAEConfig, mask_ratio: float = 0.75) -> float:
    return 3.0 * mae_forward_flops(cfg, mask_ratio)
