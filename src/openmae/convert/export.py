"""Convert weight files between the openmae/official, timm and Hugging Face layouts (.pth or .safetensors)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from openmae.convert.checkpoints import infer_config, to_openmae_keys
from openmae.convert.files import load_file, save_file, unwrap_state_dict
from openmae.convert.hf import Layout, hf_config_dict, openmae_to_hf
from openmae.convert.timm import openmae_to_timm
from openmae.models.mae import MAEConfig

Format = Literal["openmae", "official", "timm", "hf"]
FORMATS = ("openmae", "official", "timm", "hf")


def convert_file(src: str | os.PathLike, dst: str | os.PathLike, to: Format, hf_layout: Layout = "v4") -> Path:
    """Read ``src`` (any supported layout) and write it in layout ``to``.

    ``official``/``openmae``: ``{'model': state_dict}`` (.pth) or the flat state dict (.safetensors);
    ``timm``: the encoder's ``VisionTransformer`` state dict; ``hf``: a Hugging Face folder
    (``model.safetensors`` + ``config.json``) when ``dst`` has no suffix, else just the tensors.
    """
    if to not in FORMATS:
        raise ValueError(f"unknown target format {to!r}; choose one of {FORMATS}")
    obj = load_file(src)
    sd = to_openmae_keys(unwrap_state_dict(obj))
    cfg = MAEConfig(**obj["model_config"]) if isinstance(obj, dict) and isinstance(obj.get("model_config"), dict) \
        else infer_config(sd)
    dst = Path(dst)
    if to == "timm":
        return save_file(openmae_to_timm(sd), dst)
    if to == "hf":
        tensors = openmae_to_hf(sd, layout=hf_layout)
        if dst.suffix:
            return save_file(tensors, dst)
        dst.mkdir(parents=True, exist_ok=True)
        save_file(tensors, dst / "model.safetensors")
        config = {"model_type": "vit_mae", "architectures": ["ViTMAEForPreTraining"], **hf_config_dict(cfg)}
        (dst / "config.json").write_text(json.dumps(config, indent=2))
        return dst
    if dst.suffix == ".safetensors":
        return save_file(sd, dst)
    payload = {"model": sd}
    if to == "openmae":
        payload["model_config"] = cfg.to_dict()
    return save_file(payload, dst)
