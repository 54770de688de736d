"""Load weights of any supported layout (openmae, official MAE, timm, Hugging Face) into a MaskedAutoencoder."""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import torch

from openmae.convert.files import load_file, unwrap_state_dict
from openmae.convert.hf import hf_to_openmae, is_hf_state_dict
from openmae.convert.timm import timm_to_openmae
from openmae.data.normalization import official_args
from openmae.models.mae import DECODER_PREFIXES, MAEConfig, MaskedAutoencoder
from openmae.models.patches import PIXEL_HEADS, adapt_in_chans
from openmae.models.pos_embed import interpolate_pos_embed
from openmae.models.registry import VIT_SIZES

log = logging.getLogger(__name__)


class StateDictMismatch(ValueError):
    """Keys or shapes of a checkpoint do not fit the model; the message lists every difference."""


def to_openmae_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Normalise any supported layout to openmae/official keys."""
    if is_hf_state_dict(sd):
        return hf_to_openmae(sd)
    return timm_to_openmae(sd)


def holds_decoder(obj: Any) -> bool:
    """Whether ``obj`` (a loaded checkpoint) is an MAE with its decoder's pixel head, in any layout
    :func:`load_pretrained` reads: ``decoder_pred`` ends its key in openmae's, the official code's and Hugging Face's
    (``decoder.decoder_pred``) alike, so the keys are not converted (a Hugging Face file's would be copied)."""
    try:
        sd = unwrap_state_dict(obj)
    except ValueError:
        return False
    return any(key.endswith("decoder_pred.weight") for key in sd)


TRAIN_A_DECODER = ("train a decoder behind the frozen encoder first (`openmae pretrain --data <images> -o runs/decoder "
                   "model.name=auto pretrain.init={path} pretrain.tune_blocks=0`) and give that run's "
                   "model-last.pth, or a file with its decoder (mae_visualize_*.pth, a pretraining run's model-last.pth)")


def describe(cfg_like: dict[str, Any]) -> str:
    return f"width {cfg_like['embed_dim']}, depth {cfg_like['depth']}, patch {cfg_like['patch_size']}"


def infer_config(sd: dict[str, torch.Tensor], **overrides: Any) -> MAEConfig:
    """Guess the :class:`MAEConfig` of an openmae/official state dict from its shapes.

    Heads cannot be read from shapes: the paper's sizes are used (64-wide heads for other widths).
    The image size assumes a square grid unless ``img_size`` is given.
    """
    width = sd["cls_token"].shape[-1]
    proj = sd["patch_embed.proj.weight"]  # (D, C, p, p)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    heads = {w: h for w, _, h in VIT_SIZES.values()}.get(width, max(1, width // 64))
    grid_tokens = sd["pos_embed"].shape[1] - 1
    side = math.isqrt(grid_tokens)
    params: dict[str, Any] = dict(
        embed_dim=width, depth=depth, num_heads=heads, patch_size=proj.shape[-1], in_chans=proj.shape[1],
        img_size=side * proj.shape[-1],
    )
    if "decoder_embed.weight" in sd:
        dec_width = sd["decoder_embed.weight"].shape[0]
        params.update(
            decoder_embed_dim=dec_width, decoder_num_heads=max(1, dec_width // 32),
            decoder_depth=1 + max(int(k.split(".")[1]) for k in sd if k.startswith("decoder_blocks.")),
        )
    params.update(overrides)
    return MAEConfig(**params)


def load_state_dict_into(
    model: MaskedAutoencoder, sd: dict[str, torch.Tensor], interpolate: bool = True
) -> list[str]:
    """Load openmae/official/timm/HF weights into ``model``; returns the keys left at their init.

    A file with a decoder must fit the whole model exactly; an encoder-only file (the official
    ``mae_pretrain_vit_*``) must fit the encoder exactly and leaves the decoder as initialised. Weights of
    another number of input channels are adapted (:func:`openmae.models.patches.adapt_in_chans`, logged).
    Position tables of another grid are resized (bicubic) when ``interpolate``.
    Raises :class:`StateDictMismatch` listing missing, unexpected and mis-shaped keys.
    """
    sd = dict(to_openmae_keys(sd))  # a new dict: the adaptations below must not change the caller's
    own = model.state_dict()
    has_decoder = any(k.startswith(DECODER_PREFIXES) for k in sd)
    required = set(own) if has_decoder else {k for k in own if not k.startswith(DECODER_PREFIXES)}
    adapted = adapt_in_chans(sd, model.cfg.in_chans)  # weights of RGB images for a model of other bands
    for line in adapted:
        log.warning(line)
    required -= set(PIXEL_HEADS) if adapted else set()
    if interpolate:
        for key in ("pos_embed", "decoder_pos_embed"):
            if key in sd and sd[key].shape != own[key].shape and sd[key].shape[-1] == own[key].shape[-1]:
                sd[key] = interpolate_pos_embed(sd[key], model.cfg.grid)
    missing = sorted(required - set(sd))
    unexpected = sorted(set(sd) - set(own))
    misshaped = sorted(f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                       for k in set(sd) & set(own) if sd[k].shape != own[k].shape)
    if missing or unexpected or misshaped:
        lines = [f"checkpoint does not fit the model ({describe(model.cfg.__dict__)}):"]
        if "cls_token" in sd and "patch_embed.proj.weight" in sd and "blocks.0.norm1.weight" in sd:
            lines.append(f"  the checkpoint looks like {describe(infer_config(sd).__dict__)}")
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:20]) + (" ..." if len(items) > 20 else ""))
        if missing == ["norm.bias", "norm.weight"]:
            lines.append("  a classifier fine-tuned with average pooling has no final norm (its fc_norm normalises the "
                         "pooled tokens instead, and was left out): evaluate it with `openmae evaluate`, read its "
                         "features with `openmae knn` / `openmae linprobe` (pooling=mean), train a decoder behind it "
                         "(`openmae pretrain ... pretrain.init=<it> pretrain.tune_blocks=0`: its final norm starts at "
                         "its initialisation), or give the pretraining checkpoint it was fine-tuned from")
        raise StateDictMismatch("\n".join(lines))
    model.load_state_dict(sd, strict=False)
    return sorted(set(own) - set(sd))


def official_args_config(obj: Any) -> MAEConfig | None:
    """The architecture the official MAE code's ``args`` (saved with each of its checkpoints) names: ``--model``
    (mae_vit_base_patch16; a fine-tuning's vit_base_patch16: that encoder), ``--input_size`` and, for pretraining,
    ``--norm_pix_loss``; None when there are no such args, the model is no preset here, or its tensors' shapes are
    not that preset's (the code was changed)."""
    from openmae.models.registry import PRESETS, model_config

    args = official_args(obj)
    name = args.get("model") if args is not None else None
    if not isinstance(name, str):
        return None
    name = name if name in PRESETS else f"mae_{name}"
    if name not in PRESETS:
        return None
    overrides: dict[str, Any] = {}
    if isinstance(args.get("input_size"), int):
        overrides["img_size"] = args["input_size"]
    if isinstance(args.get("norm_pix_loss"), bool):
        overrides["norm_pix_loss"] = args["norm_pix_loss"]
    return _if_shapes_agree(model_config(name, **overrides), _shapes_of(obj))


def _shapes_of(obj: Any) -> tuple[MAEConfig, bool] | None:
    """The architecture a file's tensors show (head counts guessed) and whether they hold a decoder, or None (no
    state dict, or no ViT encoder in it)."""
    try:
        sd = to_openmae_keys(unwrap_state_dict(obj))
        return infer_config(sd), any(k.startswith(DECODER_PREFIXES) for k in sd)
    except (KeyError, ValueError):
        return None


def _if_shapes_agree(named: MAEConfig, shapes: tuple[MAEConfig, bool] | None) -> MAEConfig | None:
    """``named`` (what a file's args name) when the ``shapes`` read from its tensors agree with it in all but the head
    counts, else None (the code or settings were changed after it was named)."""
    if shapes is None:
        return None
    read = ["embed_dim", "depth", "patch_size", "in_chans", "img_size"]
    if shapes[1]:
        read += ["decoder_embed_dim", "decoder_depth"]
    return named if all(getattr(named, k) == getattr(shapes[0], k) for k in read) else None


def timm_train_config(obj: Any) -> MAEConfig | None:
    """The architecture of a checkpoint of timm's train.py: its tensors' shapes with the head count of the timm model
    its ``arch`` names (:func:`openmae.convert.timm_train.timm_model_facts`), when that model's shapes agree."""
    from openmae.convert.timm_train import timm_model_facts

    facts = timm_model_facts(obj)
    shapes = _shapes_of(obj)
    if facts is None or not facts["img_size"] or shapes is None:
        return None
    named = {k: facts[k] for k in ("embed_dim", "depth", "num_heads", "patch_size", "in_chans", "img_size")}
    return _if_shapes_agree(MAEConfig(**{**shapes[0].to_dict(), **named}), shapes)


def stored_config(obj: Any) -> MAEConfig | None:
    """The architecture a loaded weights file stores (openmae's files, a Hugging Face folder's config.json, the
    official code's checkpoints: :func:`official_args_config`, timm's train.py ones: :func:`timm_train_config`), or
    None: then only :func:`infer_config` can read one from the shapes, guessing head counts."""
    if isinstance(obj, dict) and isinstance(obj.get("model_config"), dict):
        return MAEConfig(**obj["model_config"])
    return official_args_config(obj) or timm_train_config(obj)


def file_architecture(obj: Any, sd: dict[str, torch.Tensor], origin: str, heads_set: bool = False) -> MAEConfig:
    """The architecture of a loaded weights file (``sd``: its state dict in openmae keys): the one it stores
    (:func:`stored_config`), else the one its tensors' shapes say, with a warning that head counts are guessed
    unless the run sets them (``heads_set``: ``model.num_heads`` given); said, not warned, for the paper's ViT sizes
    (the released official weights)."""
    stored = stored_config(obj)
    if stored is not None:
        return stored
    cfg = infer_config(sd)
    paper = (cfg.embed_dim, cfg.depth, cfg.num_heads) in VIT_SIZES.values()  # ViT-Ti/S/B/L/H: their heads are known
    if not heads_set:
        log.log(logging.INFO if paper else logging.WARNING,
                "%s records no architecture: read from its tensors' shapes as width %d, depth %d, patch %d, with "
                "%d head%s (the paper's for this width; the shapes cannot tell): a model trained with other head "
                "counts measures wrong here; set model.num_heads=<its heads> if it had others", origin,
                cfg.embed_dim, cfg.depth, cfg.patch_size, cfg.num_heads, "s" * (cfg.num_heads != 1))
    return cfg


def load_pretrained(
    source: str | os.PathLike | dict[str, Any], name: str | None = None, **overrides: Any
) -> MaskedAutoencoder:
    """A MaskedAutoencoder with the weights of ``source`` (a file path or a loaded checkpoint dict).

    The architecture comes from, in order: ``name`` (a registry preset) with ``overrides``; the config stored
    in an openmae checkpoint; otherwise it is inferred from the tensor shapes.
    """
    from openmae.models.registry import model_config

    obj = load_file(source) if not isinstance(source, dict) else source
    sd = to_openmae_keys(unwrap_state_dict(obj))
    if name is not None:
        cfg = model_config(name, **overrides)
    elif (stored := stored_config(obj)) is not None:
        cfg = MAEConfig(**{**stored.to_dict(), **overrides})
    else:
        cfg = infer_config(sd, **overrides)
    model = MaskedAutoencoder(cfg)
    load_state_dict_into(model, sd)
    return model


def trained_multi_label(obj: Any) -> bool:
    """Whether a classifier file was trained on several classes an image (``data.multi_label``): its record, its
    run's settings, or a timm / Hugging Face folder's ``problem_type``."""
    if not isinstance(obj, dict):
        return False
    run_cfg = obj.get("config") if isinstance(obj.get("config"), dict) else {}
    data = run_cfg.get("data") if isinstance(run_cfg.get("data"), dict) else {}
    return bool(obj.get("multi_label", data.get("multi_label", False)))
