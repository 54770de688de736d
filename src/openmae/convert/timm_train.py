"""Checkpoints of timm's training script (``train.py``, through ``timm.utils.CheckpointSaver``): ``checkpoint-N.pth.tar``
and ``model_best.pth.tar``, ``{'arch': args.model, 'state_dict', 'state_dict_ema'?, 'args', 'epoch', 'metric',
'optimizer', 'saver', ...}``.

Their ``arch`` (with ``args.model_kwargs`` / ``args.in_chans``) names the timm model they hold, which says what the
tensors' shapes cannot: the head count, how the classifier pools its tokens (``global_pool``, ``fc_norm``) and the
normalisation the run's images had (``args.mean`` / ``args.std``, else the model's ``pretrained_cfg``'s, as timm's
``resolve_data_config`` takes them). The model is built by timm itself on the meta device (its shapes, no weights;
0.1 s for a ViT-L) instead of parsing the name, so that every name and tag timm knows is read as timm reads it.
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Any

log = logging.getLogger(__name__)


def timm_train_args(obj: Any) -> dict[str, Any] | None:
    """The ``args`` of a checkpoint of timm's train.py (read as a dict), or None: told by its ``arch`` beside a
    ``state_dict`` and args that name that model."""
    if not (isinstance(obj, dict) and isinstance(obj.get("arch"), str) and isinstance(obj.get("state_dict"), dict)):
        return None
    args = obj.get("args")
    return args if isinstance(args, dict) and args.get("model") == obj["arch"] else None


@functools.lru_cache(maxsize=8)
def _model_facts(arch: str, kwargs_json: str) -> dict[str, Any] | None:
    import timm
    import torch
    from timm.models.vision_transformer import VisionTransformer

    if ":" in arch:  # hf-hub:<name>, local-dir:<folder>: timm would read the hub or a folder that may be gone
        log.info("%s is read from the hub or a folder by timm: its architecture is read from the tensors' shapes", arch)
        return None
    try:
        with torch.device("meta"):
            model = timm.create_model(arch, pretrained=False, **json.loads(kwargs_json))
    except Exception as err:  # an unknown name, a timm too old for it, settings it refuses: the shapes will say
        log.info("timm could not build %s (%s): its architecture is read from the tensors' shapes", arch, err)
        return None
    if not isinstance(model, VisionTransformer):
        return None
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return {"embed_dim": model.embed_dim, "depth": len(model.blocks), "num_heads": model.blocks[0].attn.num_heads,
            "patch_size": model.patch_embed.patch_size[0], "in_chans": model.patch_embed.proj.in_channels,
            "img_size": list(model.patch_embed.img_size or ()),
            "global_pool": model.global_pool, "fc_norm": not isinstance(model.fc_norm, torch.nn.Identity),
            "mean": list(cfg["mean"]) if cfg.get("mean") else None, "std": list(cfg["std"]) if cfg.get("std") else None}


def timm_model_facts(obj: Any) -> dict[str, Any] | None:
    """What the timm model a train.py checkpoint names says of itself (width, depth, heads, patch, channels, image
    size, ``global_pool``, ``fc_norm``, its ``pretrained_cfg`` mean / std), or None (no such checkpoint, or a model
    that is no timm VisionTransformer)."""
    args = timm_train_args(obj)
    if args is None:
        return None
    kwargs = dict(args.get("model_kwargs") or {})
    if isinstance(args.get("in_chans"), int):
        kwargs["in_chans"] = args["in_chans"]
    try:
        kwargs_json = json.dumps(kwargs, sort_keys=True)
    except TypeError:
        return None
    return _model_facts(obj["arch"], kwargs_json)


def timm_train_stats(obj: Any) -> dict[str, Any] | None:
    """The normalisation a train.py run's images had: ``--mean`` / ``--std`` as given, else its model's."""
    args = timm_train_args(obj)
    if args is None:
        return None
    facts = timm_model_facts(obj) or {}
    mean = args.get("mean") or facts.get("mean")
    std = args.get("std") or facts.get("std")
    if not mean or not std:
        return None
    channels = facts.get("in_chans", len(mean))
    widen = lambda v: [float(x) for x in v] * (channels if len(v) == 1 else 1)  # timm takes one value for all
    return {"mean": widen(mean), "std": widen(std), "format": "image"}
