"""openmae/official <-> Hugging Face ``ViTMAEForPreTraining`` state dicts, both directions.

Two Hugging Face layouts exist: the one of the published hub files and transformers 4.x
(``vit.encoder.layer.{i}.attention.attention.query``, separate q/k/v) and the one of transformers 5.x
(``vit.layers.{i}.attention.q_proj``). Both are read; ``layout`` picks which one to write.
Pure functions on dicts of tensors: transformers itself is not needed here.
"""

from __future__ import annotations

import logging
import re
from typing import Literal

import torch

from openmae.models.mae import MAEConfig

log = logging.getLogger(__name__)
Layout = Literal["v4", "v5"]

# per-block sub-keys: openmae (timm) name -> HF name, for each layout (qkv is handled apart: split / concatenated)
_BLOCK_KEYS: dict[str, dict[str, str]] = {
    "v4": {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
           "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"},
    "v5": {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.o_proj",
           "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"},
}
_QKV_NAMES = {"v4": ("attention.attention.query", "attention.attention.key", "attention.attention.value"),
              "v5": ("attention.q_proj", "attention.k_proj", "attention.v_proj")}
_ENCODER_BLOCK = {"v4": "vit.encoder.layer", "v5": "vit.layers"}
_TOP_KEYS = {
    "cls_token": "vit.embeddings.cls_token",
    "pos_embed": "vit.embeddings.position_embeddings",
    "patch_embed.proj.weight": "vit.embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "vit.embeddings.patch_embeddings.projection.bias",
    "norm.weight": "vit.layernorm.weight",
    "norm.bias": "vit.layernorm.bias",
    "mask_token": "decoder.mask_token",
    "decoder_pos_embed": "decoder.decoder_pos_embed",
    "decoder_embed.weight": "decoder.decoder_embed.weight",
    "decoder_embed.bias": "decoder.decoder_embed.bias",
    "decoder_norm.weight": "decoder.decoder_norm.weight",
    "decoder_norm.bias": "decoder.decoder_norm.bias",
    "decoder_pred.weight": "decoder.decoder_pred.weight",
    "decoder_pred.bias": "decoder.decoder_pred.bias",
}
_BLOCK_RE = re.compile(r"^(blocks|decoder_blocks)\.(\d+)\.(.+)\.(weight|bias)$")


def installed_layout() -> Layout:
    """The layout of the installed transformers (v5 names from transformers 5.0 on)."""
    import transformers

    return "v5" if int(transformers.__version__.split(".")[0]) >= 5 else "v4"


def detect_layout(hf_sd: dict[str, torch.Tensor]) -> Layout:
    return "v5" if any(k.startswith("vit.layers.") or ".attention.q_proj." in k for k in hf_sd) else "v4"


def is_hf_state_dict(sd: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(("vit.", "decoder.decoder_")) for k in sd)


def openmae_to_hf(sd: dict[str, torch.Tensor], layout: Layout = "v4") -> dict[str, torch.Tensor]:
    """openmae/official keys -> Hugging Face ``ViTMAEForPreTraining`` keys (qkv split into q, k, v)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key in _TOP_KEYS:
            out[_TOP_KEYS[key]] = value
            continue
        m = _BLOCK_RE.match(key)
        if not m:
            raise KeyError(f"no Hugging Face name for key {key!r}")
        where, idx, sub, kind = m.groups()
        prefix = f"{_ENCODER_BLOCK[layout]}.{idx}" if where == "blocks" else f"decoder.decoder_layers.{idx}"
        if sub == "attn.qkv":
            for name, part in zip(_QKV_NAMES[layout], value.chunk(3, dim=0)):
                out[f"{prefix}.{name}.{kind}"] = part.clone()
        elif sub in _BLOCK_KEYS[layout]:
            out[f"{prefix}.{_BLOCK_KEYS[layout][sub]}.{kind}"] = value
        else:
            raise KeyError(f"no Hugging Face name for key {key!r}")
    return out


def hf_to_openmae(hf_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face ``ViTMAEForPreTraining`` (either layout) -> openmae/official keys (q, k, v concatenated)."""
    layout = detect_layout(hf_sd)
    reverse_top = {v: k for k, v in _TOP_KEYS.items()}
    reverse_block = {v: k for k, v in _BLOCK_KEYS[layout].items()}
    # transformers 5's save_pretrained writes the decoder's blocks as decoder.decoder_encoder.layer.{i} (its renaming
    # of v5's layers back to the hub's encoder.layer reaches decoder_layers too), and reads them back so: both taken
    block_re = re.compile(rf"^({re.escape(_ENCODER_BLOCK[layout])}|decoder\.decoder_layers|decoder\.decoder_encoder\.layer)"
                          r"\.(\d+)\.(.+)\.(weight|bias)$")
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    for key, value in hf_sd.items():
        if key in reverse_top:
            out[reverse_top[key]] = value
            continue
        m = block_re.match(key)
        if not m:
            raise KeyError(f"unexpected key {key!r} in a Hugging Face ViTMAE state dict ({layout} layout)")
        where, idx, sub, kind = m.groups()
        prefix = f"decoder_blocks.{idx}" if where.startswith("decoder.") else f"blocks.{idx}"
        if sub in _QKV_NAMES[layout]:
            qkv.setdefault((prefix, kind), {})[_QKV_NAMES[layout].index(sub)] = value
        elif sub in reverse_block:
            out[f"{prefix}.{reverse_block[sub]}.{kind}"] = value
        else:
            raise KeyError(f"unexpected key {key!r} in a Hugging Face ViTMAE state dict ({layout} layout)")
    for (prefix, kind), parts in qkv.items():
        if sorted(parts) != [0, 1, 2]:
            raise KeyError(f"{prefix}: query/key/value {kind} incomplete in the Hugging Face state dict")
        out[f"{prefix}.attn.qkv.{kind}"] = torch.cat([parts[0], parts[1], parts[2]], dim=0)
    return out


def hf_config_dict(cfg: MAEConfig, mask_ratio: float = 0.75) -> dict:
    """Keyword arguments for ``transformers.ViTMAEConfig`` describing the same model (square images)."""
    if cfg.img_size[0] != cfg.img_size[1]:
        raise ValueError(f"Hugging Face ViTMAE supports square images only; this model is {cfg.img_size}")
    return {
        "hidden_size": cfg.embed_dim, "num_hidden_layers": cfg.depth, "num_attention_heads": cfg.num_heads,
        "intermediate_size": int(cfg.embed_dim * cfg.mlp_ratio),
        "decoder_hidden_size": cfg.decoder_embed_dim, "decoder_num_hidden_layers": cfg.decoder_depth,
        "decoder_num_attention_heads": cfg.decoder_num_heads,
        "decoder_intermediate_size": int(cfg.decoder_embed_dim * cfg.mlp_ratio),
        "image_size": cfg.img_size[0], "patch_size": cfg.patch_size, "num_channels": cfg.in_chans,
        "layer_norm_eps": 1e-6, "qkv_bias": True, "hidden_act": "gelu", "norm_pix_loss": cfg.norm_pix_loss,
        "mask_ratio": mask_ratio, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
    }


def mae_config_from_hf(hf: dict) -> MAEConfig:
    """:class:`MAEConfig` from a Hugging Face ``config.json`` dict (or ``ViTMAEConfig.to_dict()``)."""
    eps = hf.get("layer_norm_eps", 1e-12)
    if abs(eps - 1e-6) > 1e-9:  # the hub's ViTMAE configs say 1e-12, transformers' default, for weights trained at 1e-6
        log.info("the Hugging Face config has layer_norm_eps=%g; openmae's layers use 1e-6, as the official MAE's "
                 "(outputs differ from transformers' with %g by about that much)", eps, eps)
    return MAEConfig(
        img_size=hf["image_size"], patch_size=hf["patch_size"], in_chans=hf.get("num_channels", 3),
        embed_dim=hf["hidden_size"], depth=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
        decoder_embed_dim=hf["decoder_hidden_size"], decoder_depth=hf["decoder_num_hidden_layers"],
        decoder_num_heads=hf["decoder_num_attention_heads"],
        mlp_ratio=hf["intermediate_size"] / hf["hidden_size"], norm_pix_loss=hf.get("norm_pix_loss", False),
    )
