"""Convert weight files between the openmae/official, timm and Hugging Face layouts (.pth or .safetensors)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

from torch import nn

from openmae.convert.checkpoints import infer_config, stored_config, to_openmae_keys, trained_multi_label
from openmae.convert.files import load_file, save_file, unwrap_state_dict, weights_metadata
from openmae.convert.hf import Layout, hf_config_dict, openmae_to_hf
from openmae.convert.timm import openmae_to_timm
from openmae.convert.timm_folder import save_timm_folder
from openmae.data.normalization import assumed_stats, recorded_stats
from openmae.models.mae import MAEConfig
from openmae.models.vit import fold_bn_head

Format = Literal["openmae", "official", "timm", "hf"]
FORMATS = ("openmae", "official", "timm", "hf")

log = logging.getLogger(__name__)


def convert_file(src: str | os.PathLike, dst: str | os.PathLike, to: Format, hf_layout: Layout = "v4") -> Path:
    """Read ``src`` (any supported layout) and write it in layout ``to``.

    ``official``/``openmae``: ``{'model': state_dict}`` (.pth) or the flat state dict (.safetensors);
    ``timm``: the encoder's ``VisionTransformer`` state dict; ``hf``: a Hugging Face folder
    (``model.safetensors`` + ``config.json``, and ``preprocessor_config.json`` when ``src`` records the normalisation
    of its images) when ``dst`` has no suffix, else just the tensors. An ``openmae`` file keeps the normalisation
    ``src`` records (:mod:`openmae.data.normalization`); a ``timm`` or ``openmae`` .safetensors carries the model
    config (a ``timm`` one: when ``src`` stores it) and the normalisation as metadata, which timm ignores.
    ``timm`` to a path without suffix: a timm model folder (:mod:`openmae.convert.timm_folder`).

    A classifier (``model-best.pth`` or a checkpoint of ``openmae finetune`` / an online ``openmae linprobe``) keeps
    its head: ``timm`` and ``hf`` to a folder write the timm model folder that timm and transformers'
    ``AutoModelForImageClassification`` load, with its classes' names and normalisation; ``timm`` to a file, the
    flat state dict (a probe's BatchNorm head folded into its Linear).
    """
    if to not in FORMATS:
        raise ValueError(f"unknown target format {to!r}; choose one of {FORMATS}")
    obj = load_file(src)
    raw = unwrap_state_dict(obj)
    sd = to_openmae_keys(raw)
    stored = stored_config(obj)
    cfg = stored or infer_config(sd)
    dst = Path(dst)
    stats = recorded_stats(obj)
    if stats is None and (stats := assumed_stats(obj, cfg.in_chans)) is not None:
        log.info("%s records no normalisation: ImageNet's assumed (the official MAE code, timm and Hugging Face train "
                 "MAE with it; openmae reads such files so), written where the %s layout keeps one", src, to)
    classifier = "head.weight" in raw or "head.1.weight" in raw  # fine-tuned, or an online probe's BatchNorm head
    if classifier:
        sd = raw  # with its head and fc_norm (to_openmae_keys reads an encoder, without them)
    if classifier and to in ("timm", "hf") and not dst.suffix:
        return classifier_folder(src, obj, dst)
    if classifier and to == "hf":
        raise ValueError(f"a classifier goes to Hugging Face as a folder (config.json, model.safetensors) that "
                         f"transformers' AutoModelForImageClassification loads; give a folder: {dst.with_suffix('')}")
    if to == "timm" and not dst.suffix:  # an encoder as a timm model folder (timm.create_model("local-dir:..."))
        return save_timm_folder(openmae_to_timm(sd), cfg, dst, stats=stats)
    if to == "timm":  # a known architecture (and normalisation) as metadata, which timm leaves alone
        return save_file(fold_bn_head(openmae_to_timm(sd)), dst,
                         metadata=weights_metadata(cfg.to_dict(), stats) if stored is not None else None)
    if to == "hf":
        tensors = openmae_to_hf(sd, layout=hf_layout)
        if dst.suffix:
            return save_file(tensors, dst)
        dst.mkdir(parents=True, exist_ok=True)
        save_file(tensors, dst / "model.safetensors")
        config = {"model_type": "vit_mae", "architectures": ["ViTMAEForPreTraining"], **hf_config_dict(cfg)}
        (dst / "config.json").write_text(json.dumps(config, indent=2))
        if stats is not None and stats["format"] == "image":
            (dst / "preprocessor_config.json").write_text(json.dumps(hf_processor_dict(cfg, stats), indent=2))
        return dst
    if dst.suffix == ".safetensors":  # openmae: the config (and normalisation) as metadata, read back by load_file
        return save_file(sd, dst, metadata=weights_metadata(cfg.to_dict(), stats) if to == "openmae" else None)
    payload = {"model": sd}
    if to == "openmae":
        payload["model_config"] = cfg.to_dict()
        if stats is not None:
            payload["normalization"] = stats
    return save_file(payload, dst)


def classifier_folder(src: str | os.PathLike, obj: dict[str, Any], dst: Path) -> Path:
    """A fine-tuned classifier or online probe as a timm model folder (:mod:`openmae.convert.timm_folder`), built as
    its run built it (how its head reads the tokens comes from the run's settings in the file)."""
    from openmae.engine.evaluate import load_classifier  # the engine's reading of a run's classifier file

    model, cfg = load_classifier(str(src), obj=obj)
    run_data = (obj.get("config") or {}).get("data") or {}
    return save_timm_folder(model.state_dict(), cfg, dst, model.num_classes, model.global_pool,
                            fc_norm=not isinstance(model.fc_norm, nn.Identity), classes=obj.get("classes"),
                            stats=recorded_stats(obj) or assumed_stats(obj, cfg.in_chans),
                            crop_pct=run_data.get("eval_crop_pct"), multi_label=trained_multi_label(obj),
                            thresholds=obj.get("thresholds"), temperature=obj.get("temperature"))


def hf_processor_dict(cfg: MAEConfig, stats: dict[str, Any]) -> dict[str, Any]:
    """A ``ViTImageProcessor`` for the model's images (8-bit pixels): bicubic resize to the model's size, scaled to
    [0, 1], normalised with the recorded mean / std, as the Hugging Face hub's ViTMAE checkpoints are."""
    return {"image_processor_type": "ViTImageProcessor", "do_resize": True,
            "size": {"height": cfg.img_size[0], "width": cfg.img_size[1]}, "resample": 3, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": stats["mean"], "image_std": stats["std"]}
