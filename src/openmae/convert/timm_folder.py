"""A ViT as a timm model folder: ``config.json`` + ``model.safetensors`` as timm itself writes them
(``timm.models.save_for_hf``), with its classes' names and its images' normalisation.

Two libraries load such a folder: timm (``timm.create_model("local-dir:<folder>", pretrained=True)``) and Hugging Face
transformers (``AutoModelForImageClassification`` / ``AutoImageProcessor``, through its TimmWrapper models). It is the
Hugging Face form of a classifier: transformers' own ``ViTForImageClassification`` reads the cls token only, while
the paper's fine-tuning pools the patch tokens (``global_pool=avg`` + ``fc_norm``), which a timm model keeps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from openmae.data.transforms import eval_crop_pct
from openmae.models.config import MAEConfig
from openmae.models.vit import fold_bn_head

SIZES = {192: "tiny", 384: "small", 768: "base", 1024: "large", 1280: "huge"}  # timm's names for the widths
# what timm copies from the named model's own weights into the folder's config, which are not these weights'
INHERITED = ("tag", "license", "hf_hub_id", "origin_url", "paper_ids", "paper_name", "notes")
MULTI_LABEL = "multi_label_classification"  # transformers' problem_type of a classifier of several classes an image


def timm_architecture(cfg: MAEConfig) -> str:
    """A timm architecture name for ``cfg`` (``vit_base_patch16_224``): the named model of its width, patch and size
    when timm has one, else ViT-B/16's; the folder's ``model_args`` hold the whole shape either way."""
    import timm

    name = f"vit_{SIZES.get(cfg.embed_dim, 'base')}_patch{cfg.patch_size}_{cfg.img_size[0]}"
    return name if timm.is_model(name) else "vit_base_patch16_224"


def save_timm_folder(sd: dict[str, torch.Tensor], cfg: MAEConfig, dst: str | Path, num_classes: int = 0,
                     global_pool: str = "token", fc_norm: bool | None = None, classes: list[str] | None = None,
                     stats: dict[str, Any] | None = None, crop_pct: float | None = None,
                     multi_label: bool = False, thresholds: list[float] | None = None,
                     temperature: float | None = None) -> Path:
    """Write the ViT of state dict ``sd`` (timm keys: an encoder, a fine-tuned classifier, or an online probe whose
    BatchNorm head is folded into its Linear) to folder ``dst``. ``global_pool`` / ``fc_norm``: how its head reads
    the tokens (:func:`openmae.models.vit.create_classifier`); ``classes``: the names of its outputs; ``stats``: the
    normalisation its images had (``mean`` / ``std``), with the evaluation's bicubic resize and centre crop;
    ``multi_label``: a classifier of several classes an image (``problem_type`` in its ``config.json``), with
    ``thresholds``, each class's decision threshold (``decision_thresholds``: transformers keeps the key as the
    config's attribute); ``temperature``: the one that calibrates its probabilities (``calibration_temperature``: the
    logits / it; transformers' own ``temperature`` is a text generation setting)."""
    import timm
    from timm.models import save_for_hf

    shape = {"img_size": list(cfg.img_size), "patch_size": cfg.patch_size, "in_chans": cfg.in_chans,
             "embed_dim": cfg.embed_dim, "depth": cfg.depth, "num_heads": cfg.num_heads, "mlp_ratio": cfg.mlp_ratio,
             "global_pool": global_pool, **({"fc_norm": fc_norm} if fc_norm is not None else {})}
    weights = fold_bn_head({k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")})
    if "head.weight" in weights and weights["head.weight"].shape[1] != cfg.embed_dim:
        raise ValueError(f"its head reads {weights['head.weight'].shape[1]} features an image (a probe of several "
                         f"blocks, or of the cls token and the mean together), which a timm ViT's head, reading "
                         f"{cfg.embed_dim}, cannot; convert the encoder it probes instead")
    model = timm.create_model(timm_architecture(cfg), pretrained=False, num_classes=num_classes, **shape)
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        said = " ".join(str(err).split())  # torch's message runs over several lines
        raise ValueError(f"the weights do not fit a timm ViT {cfg.embed_dim} wide, {cfg.depth} blocks deep, of "
                         f"{num_classes} classes with {global_pool} pooling: {said[:400]}") from None
    preprocessing: dict[str, Any] = {"interpolation": "bicubic", "crop_mode": "center",
                                     "crop_pct": eval_crop_pct(crop_pct, cfg.img_size)}
    if stats is not None:
        preprocessing.update(mean=list(stats["mean"]), std=list(stats["std"]))
    dst = Path(dst)
    save_for_hf(model, str(dst), model_config={"label_names": list(classes)} if classes else None,
                safe_serialization=True, data_config=preprocessing)
    # Two mendings of timm's config.json. Its model_args repeat num_classes, which transformers' TimmWrapper passes
    # to timm itself as well ("got multiple values for keyword argument 'num_classes'"); timm reads it from the
    # top-level num_classes too. Its pretrained_cfg keeps the tag and licence of the named model's own weights.
    path = dst / "config.json"
    config = json.loads(path.read_text())
    config["model_args"].pop("num_classes", None)
    for key in INHERITED:
        config["pretrained_cfg"].pop(key, None)
    if multi_label:  # transformers then learns it with binary cross-entropy; openmae evaluates its labels as sets
        config["problem_type"] = MULTI_LABEL
    if multi_label and thresholds:
        config["decision_thresholds"] = [float(t) for t in thresholds]
    if temperature is not None and num_classes:
        config["calibration_temperature"] = float(temperature)
    path.write_text(json.dumps(config, indent=2))
    return dst


def read_timm_config(config: dict[str, Any]) -> dict[str, Any]:
    """What a timm model folder's ``config.json`` (this module's, or a timm hub download such as
    ``timm/vit_base_patch16_224.mae``) says of its weights, as a loaded checkpoint holds it: ``model_config`` (the
    :class:`MAEConfig` dict), ``normalization`` when it records one, and how a classifier's head reads the tokens
    (``global_pool``, ``fc_norm``); {} for another kind of config. The shape is read off the model timm builds from
    it, on the meta device (no memory, no weights): head counts are not in the tensors' shapes."""
    if not isinstance(config.get("architecture"), str):
        return {}
    import timm
    from timm.models.vision_transformer import VisionTransformer

    args = {k: v for k, v in (config.get("model_args") or {}).items() if k != "num_classes"}
    try:
        with torch.device("meta"):
            model = timm.create_model(config["architecture"], pretrained=False, num_classes=0, **args)
    except (RuntimeError, TypeError, ValueError):  # a model this timm does not know, or arguments it does not take
        return {}
    if not isinstance(model, VisionTransformer):
        return {}
    block = model.blocks[0]
    shape = MAEConfig(img_size=tuple(model.patch_embed.img_size), patch_size=model.patch_embed.patch_size[0],
                      in_chans=model.patch_embed.proj.in_channels, embed_dim=model.embed_dim, depth=len(model.blocks),
                      num_heads=block.attn.num_heads, mlp_ratio=block.mlp.fc1.out_features / model.embed_dim)
    read: dict[str, Any] = {"model_config": shape.to_dict(), "global_pool": model.global_pool,
                            "fc_norm": not isinstance(model.fc_norm, torch.nn.Identity)}
    pretrained = config.get("pretrained_cfg") or {}
    if pretrained.get("mean") and pretrained.get("std"):
        read["normalization"] = {"mean": [float(v) for v in pretrained["mean"]],
                                 "std": [float(v) for v in pretrained["std"]], "format": "image"}
    return read
