"""``openmae info``: what a weights file holds, before it is used or converted: which program wrote it and in what
layout, which parts of the model (encoder, decoder, classifier head), the architecture (stored, or read from the
tensors' shapes, where head counts are a guess) and the preset it matches, the normalisation it records, and for
openmae's own files the run it comes from (task, step, epochs, data, metrics)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from openmae.convert.checkpoints import infer_config, stored_config, to_openmae_keys, trained_multi_label
from openmae.convert.files import fetch, load_file, unwrap_state_dict
from openmae.convert.hf import detect_layout, is_hf_state_dict
from openmae.convert.timm_train import timm_train_args
from openmae.data.normalization import assumed_stats, official_args, recorded_stats
from openmae.models.mae import DECODER_PREFIXES, MAEConfig
from openmae.models.registry import PRESETS, model_config

TASKS = ("pretrain", "finetune", "linprobe")


def _preset(cfg: MAEConfig) -> str | None:
    """The preset with exactly this architecture (the loss's pixel normalisation aside), if any."""
    mine = {**cfg.to_dict(), "norm_pix_loss": False}
    return next((name for name in sorted(PRESETS) if {**model_config(name).to_dict(), "norm_pix_loss": False} == mine),
                None)


def _written_by(obj: Any, path: Path, task: str | None) -> str:
    if path.is_dir():
        return "a Hugging Face model folder"
    if task and isinstance(obj, dict) and "step" in obj:
        return f"an openmae {task} run checkpoint"
    if task:
        return f"the weights of an openmae {task} run (model-last.pth)"
    if isinstance(obj, dict) and "model_config" in obj and "metrics" in obj:
        return "an openmae classifier (model-best.pth)"
    if isinstance(obj, dict) and "model_config" in obj:
        return "openmae weights"
    if timm_train_args(obj) is not None:
        epoch = f" after epoch {obj['epoch']}" if isinstance(obj.get("epoch"), int) else ""
        ema = ("; with EMA weights (state_dict_ema): model.ema=true reads them" if isinstance(obj.get("state_dict_ema"),
                                                                                        dict) else "")
        return f"a checkpoint of timm's train.py{epoch} (--model {obj['arch']}{ema})"
    if official_args(obj) is not None:
        epoch = f" after epoch {obj['epoch']}" if isinstance(obj.get("epoch"), int) else ""
        return f"a checkpoint of the official MAE code{epoch} (with its command line's args)"
    return "weights without a config (official MAE, timm or Hugging Face files)"


def summarize(path: str | os.PathLike) -> dict[str, Any]:
    """Everything :func:`format_summary` prints, as plain data (``openmae info --json``)."""
    path = (fetch(path) if isinstance(path, str) else None) or Path(path)  # a download's local copy
    obj = load_file(path)
    raw = unwrap_state_dict(obj)
    hf = is_hf_state_dict(raw)
    # a classifier's head: timm's head.weight, a probe's BatchNorm + linear head.1.weight, or (a probe on cached
    # features) that head alone, 0.* / 1.*
    head_key = next((k for k in ("head.weight", "head.1.weight", "1.weight") if k in raw), None)
    sd = to_openmae_keys(raw)
    run = obj.get("config") if isinstance(obj, dict) and isinstance(obj.get("config"), dict) else {}
    task = next((t for t in TASKS if t in run), None)
    stored = stored_config(obj)
    try:
        cfg = stored or infer_config(sd)
    except (KeyError, ValueError):  # no ViT encoder tensors to read an architecture from
        cfg = None
    out: dict[str, Any] = {
        "path": str(path),
        "written_by": _written_by(obj, path, task),
        "layout": f"Hugging Face ({detect_layout(raw)} names)" if hf else "openmae / official / timm names",
        "tensors": len(raw),
        "parameters": sum(v.numel() for v in raw.values() if isinstance(v, torch.Tensor) and v.is_floating_point()),
        "encoder": any(k.startswith("blocks.") for k in sd),
        "decoder": any(k.startswith(DECODER_PREFIXES) for k in sd),
        "classifier_classes": int(raw[head_key].shape[0]) if head_key else None,
        "class_names": list(obj["classes"]) if isinstance(obj, dict) and isinstance(obj.get("classes"), list) else None,
        "multi_label": bool(head_key) and trained_multi_label(obj),  # several classes an image (data.multi_label)
        # each class's decision threshold, fitted where the run chose its best epoch
        "thresholds": obj["thresholds"] if isinstance(obj, dict) and isinstance(obj.get("thresholds"), list) else None,
        # the temperature that calibrated the images its run chose it on (temperature scaling)
        "temperature": obj.get("temperature") if isinstance(obj, dict) and head_key else None,
        "model": cfg.to_dict() if cfg else None,
        "architecture_from": ("the file's config" if isinstance(obj, dict) and "model_config" in obj else
                              f"timm's model {obj['arch']}" if timm_train_args(obj) is not None else
                              f"the official code's args (--model {obj['args']['model']})") if stored is not None
        else "the tensors' shapes (head counts guessed)" if cfg
        else f"nowhere: no ViT encoder among its keys ({', '.join(sorted(raw)[:5])}, ...)",
        "preset": _preset(cfg) if cfg else None,
        "normalization": recorded_stats(obj),
    }
    # what the commands take for RGB images where another program's file records none (inherit_stats)
    out["normalization_assumed"] = (assumed_stats(obj, cfg.in_chans) if cfg is not None and out["normalization"] is None
                                    else None)
    if task:
        data, train = run.get("data", {}), run.get("train", {})
        out["run"] = {"task": task, "step": obj.get("step"), "epoch": obj.get("epoch"), "epochs": train.get("epochs"),
                      "batch_size": train.get("batch_size"), "precision": train.get("precision"),
                      "data": data.get("path") or data.get("name"), "format": data.get("format", "image"),
                      "output_dir": train.get("output_dir")}
    if isinstance(obj, dict) and isinstance(obj.get("metrics"), dict):
        out["metrics"] = {"epoch": obj.get("epoch"), **obj["metrics"]}
    return out


def format_summary(info: dict[str, Any]) -> str:
    """The summary as lines a person reads."""
    m = info["model"]
    parts = [name for name, there in (("encoder", info["encoder"]), ("decoder", info["decoder"])) if there]
    if info["classifier_classes"] is not None:
        names = info["class_names"] or []
        shown = f": {', '.join(map(str, names[:6]))}{', ...' if len(names) > 6 else ''}" if names else ""
        several = ", several an image" if info.get("multi_label") else ""
        fitted = info.get("thresholds") if info.get("multi_label") else None
        fitted = f"; decision thresholds {min(fitted):.3g} to {max(fitted):.3g}" if fitted else ""
        fitted += f"; calibrated at temperature {info['temperature']:.3g}" if info.get("temperature") else ""
        parts.append(f"classifier head ({info['classifier_classes']} classes{several}{shown}{fitted})")
    elif parts == ["encoder"]:  # what visualize and evaluate need, and how to get it
        parts = ["encoder alone (no decoder: to see or measure its reconstructions, train one behind it with `openmae "
                 "pretrain ... pretrain.init=<this file> pretrain.tune_blocks=0`)"]
    lines = [
        f"{info['path']}: {info['written_by']}, {info['layout']}",
        f"  parts: {', '.join(parts) or 'none recognised'}; {info['tensors']} tensors, "
        f"{info['parameters'] / 1e6:.2f}M parameters",
        f"  model: {info['preset'] or 'no preset'}: width {m['embed_dim']}, depth {m['depth']}, {m['num_heads']} "
        f"head{'s' * (m['num_heads'] != 1)}, patch {m['patch_size']}, {m['img_size'][0]}x{m['img_size'][1]} px, "
        f"{m['in_chans']} channel{'s' * (m['in_chans'] != 1)}"
        + (f"; decoder {m['decoder_depth']} x {m['decoder_embed_dim']}" if info["decoder"] else "")
        + ("; norm_pix_loss" if m.get("norm_pix_loss") else "") + f" (from {info['architecture_from']})"
        if m else f"  model: from {info['architecture_from']}",
    ]
    stats, assumed = info["normalization"], info.get("normalization_assumed")
    lines.append("  normalisation: " + (
        f"mean {stats['mean']} std {stats['std']} (data.format={stats['format']})" if stats else
        f"not recorded; ImageNet's assumed (mean {assumed['mean']} std {assumed['std']}), as the official MAE code, "
        "timm and Hugging Face train MAE (data.mean/std set it otherwise)" if assumed else
        "not recorded (commands use data.mean/std as set, else the dataset's own or ImageNet's)"))
    if run := info.get("run"):
        where = f"step {run['step']}, epoch {run['epoch']} of {run['epochs']}" if run["step"] is not None else \
            f"{run['epochs']} epochs"
        lines.append(f"  run: {run['task']} into {run['output_dir']}, {where}, batch {run['batch_size']}, "
                     f"{run['precision']}, data {run['data']} ({run['format']})")
    if metrics := info.get("metrics"):
        lines.append("  metrics: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                               for k, v in metrics.items()))
    return "\n".join(lines)
