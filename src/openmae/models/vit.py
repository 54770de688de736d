"""The classifier for fine-tuning and probing: timm's ``VisionTransformer`` with the MAE encoder's shape.

Keys are timm's (and the official fine-tuning code's): ``fc_norm`` + global average pooling by default,
or the cls token with the final ``norm``; for linear probing the head is BatchNorm1d(affine=False) + Linear.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn
from timm.layers import trunc_normal_
from timm.models.vision_transformer import VisionTransformer

from openmae.models.attention import Attention
from openmae.models.config import GLOBAL_POOL, MAEConfig
from openmae.models.freezing import count_trained, last_block_prefixes, train_only
from openmae.models.mae import DECODER_PREFIXES
from openmae.models.patches import adapt_in_chans
from openmae.models.pos_embed import interpolate_pos_embed

log = logging.getLogger(__name__)
BN_HEAD_EPS = 1e-6  # a probe's BatchNorm1d head (the official code's)


def create_classifier(cfg: MAEConfig, num_classes: int, global_pool: str = "avg", drop_path: float = 0.0,
                      bn_head: bool = False, head_init_std: float = 2e-5, head_in: int = 0,
                      fc_norm: bool | None = None) -> VisionTransformer:
    """A ViT classifier whose encoder fits an MAE of config ``cfg``.

    ``global_pool="avg"``: mean of patch tokens then ``fc_norm`` (the paper's fine-tuning);
    ``"token"``: the cls token after the final ``norm`` (the paper's linear probe).
    ``head_in``: the head's input width when it reads something wider than one token (probes of several blocks).
    ``fc_norm=False`` with ``"avg"``: the final ``norm`` on every token, then the mean of the patch tokens (a frozen
    encoder's mean-pooled features, as kNN and cached probes pool them); None: timm's default (fc_norm for avg).
    """
    if global_pool not in GLOBAL_POOL:
        raise ValueError(f"global_pool={global_pool!r}; choose one of {GLOBAL_POOL}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    from functools import partial

    model = VisionTransformer(
        img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans, embed_dim=cfg.embed_dim,
        depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), num_classes=num_classes, global_pool=global_pool,
        drop_path_rate=drop_path, fc_norm=fc_norm, attn_layer=Attention,
    )
    head_in = head_in or cfg.embed_dim
    if head_in != cfg.embed_dim:
        model.head = nn.Linear(head_in, num_classes)
    trunc_normal_(model.head.weight, std=head_init_std)
    nn.init.zeros_(model.head.bias)
    if bn_head:
        model.head = nn.Sequential(nn.BatchNorm1d(head_in, affine=False, eps=BN_HEAD_EPS), model.head)
    return model


def tune_last_blocks(model: VisionTransformer, blocks: int | None) -> tuple[int, int]:
    """Partial fine-tuning (the paper's section 4.3): only the encoder's last ``blocks`` transformer blocks, the
    final ``norm`` / ``fc_norm`` and the head train; the patch embedding, the cls token, the position table and the
    earlier blocks keep their pretrained values (:func:`openmae.models.freezing.train_only`) and lose their drop
    path: they compute the pretrained features as they are, stochastic depth regularising the blocks that learn.
    ``None`` (or the encoder's depth): everything trains. Returns the numbers of trained and of all parameters."""
    depth = len(model.blocks)
    tuned = last_block_prefixes(depth, blocks, "finetune.tune_blocks")
    if tuned is None:
        return count_trained(model)
    for block in model.blocks[:depth - len(tuned)]:
        block.drop_path1, block.drop_path2 = nn.Identity(), nn.Identity()
    return train_only(model, (*tuned, "norm.", "fc_norm.", "head."))


def fold_bn_head(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``sd`` with a probe's BatchNorm1d(affine=False) + Linear head (``head.0`` / ``head.1``) folded into one
    ``head`` Linear with the same outputs (eval mode: the running statistics are constants), which timm's
    ``VisionTransformer`` and anything built on it load; other state dicts come back unchanged.
    W' = W / sqrt(var + eps), b' = b - W' @ mean; eps is the probe's (1e-6, :func:`create_classifier`)."""
    if "head.1.weight" not in sd:
        return sd
    mean, var = sd["head.0.running_mean"].double(), sd["head.0.running_var"].double()
    weight, bias = sd["head.1.weight"].double(), sd["head.1.bias"].double()
    folded = weight / torch.sqrt(var + BN_HEAD_EPS)
    out = {k: v for k, v in sd.items() if not k.startswith("head.")}
    dtype = sd["head.1.weight"].dtype
    out["head.weight"], out["head.bias"] = folded.to(dtype), (bias - folded @ mean).to(dtype)
    return out


def pooled_by_fc_norm(sd: dict[str, torch.Tensor]) -> bool:
    """Whether weights ``sd`` are a classifier fine-tuned with average pooling: no final ``norm``, an ``fc_norm``
    that normalises the mean of the patch tokens instead (its features, as its head reads them)."""
    return "fc_norm.weight" in sd and "norm.weight" not in sd


def load_encoder(model: VisionTransformer, mae_sd: dict[str, torch.Tensor], grid: tuple[int, int] | None = None,
                 old_grid: tuple[int, int] | None = None) -> list[str]:
    """Copy MAE encoder weights into ``model``; returns the keys left at their init (the head, fc_norm).

    The decoder is dropped; with average pooling the final ``norm`` is dropped as in the official code (and the
    ``fc_norm`` of weights that have one, a classifier fine-tuned so, kept);
    the position table is resized (bicubic) when the resolution differs; the patch embedding of another number of
    input channels is adapted (:func:`openmae.models.patches.adapt_in_chans`).
    """
    own = model.state_dict()
    # a classifier fine-tuned with average pooling, read by a model pooled alike: its fc_norm is its features' norm
    keep_fc_norm = pooled_by_fc_norm(mae_sd) and "fc_norm.weight" in own
    sd = {k: v for k, v in mae_sd.items() if not k.startswith(DECODER_PREFIXES) and not k.startswith("head.")
          and (keep_fc_norm or not k.startswith("fc_norm."))}
    for line in adapt_in_chans(sd, model.patch_embed.proj.in_channels):  # an RGB encoder for other bands
        log.warning(line)
    if "norm.weight" not in own:  # average pooling: norm is Identity, fc_norm is trained from scratch
        sd = {k: v for k, v in sd.items() if not k.startswith("norm.")}
    if "pos_embed" in sd and sd["pos_embed"].shape != own["pos_embed"].shape:
        sd["pos_embed"] = interpolate_pos_embed(sd["pos_embed"], grid or model.patch_embed.grid_size, old_grid)
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    misshaped = sorted(k for k in set(sd) & set(own) if sd[k].shape != own[k].shape)
    allowed_missing = {k for k in own if k.startswith(("head.", "fc_norm."))}
    if unexpected or misshaped or set(missing) - allowed_missing:
        raise ValueError(
            "encoder weights do not fit the classifier: "
            f"missing {sorted(set(missing) - allowed_missing)}, unexpected {unexpected}, wrong shape "
            + ", ".join(f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in misshaped)
        )
    model.load_state_dict(sd, strict=False)
    return missing
