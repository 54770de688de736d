"""openmae encoder <-> timm ``VisionTransformer``.

The MAE encoder keys *are* timm's (cls_token, pos_embed, patch_embed.proj, blocks.*, norm), so conversion is
selecting keys; the work is building the matching timm model.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from openmae.models.mae import DECODER_PREFIXES, MAEConfig

TIMM_HEAD_PREFIXES = ("head.", "fc_norm.", "head_drop.")


def openmae_to_timm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder part of an openmae/official state dict, in timm ``VisionTransformer`` keys."""
    return {k: v for k, v in sd.items() if not k.startswith(DECODER_PREFIXES)}


def timm_to_openmae(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ``VisionTransformer`` encoder keys -> openmae encoder keys (classifier head dropped)."""
    return {k: v for k, v in sd.items() if not k.startswith(TIMM_HEAD_PREFIXES)}


def timm_vit_kwargs(cfg: MAEConfig, num_classes: int = 0, global_pool: str = "token", **extra) -> dict:
    """Keyword arguments for ``timm.models.vision_transformer.VisionTransformer`` with the MAE encoder's shape."""
    return {
        "img_size": cfg.img_size, "patch_size": cfg.patch_size, "in_chans": cfg.in_chans,
        "embed_dim": cfg.embed_dim, "depth": cfg.depth, "num_heads": cfg.num_heads, "mlp_ratio": cfg.mlp_ratio,
        "qkv_bias": True, "norm_layer": partial(nn.LayerNorm, eps=1e-6), "num_classes": num_classes,
        "global_pool": global_pool, **extra,
    }


def create_timm_encoder(cfg: MAEConfig, **kwargs) -> nn.Module:
    """A timm ``VisionTransformer`` whose ``forward_features`` equals the MAE encoder's on the same weights."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(**timm_vit_kwargs(cfg, **kwargs))
