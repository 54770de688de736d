"""The normalisation a model was trained with travels with its weights.

An encoder expects its inputs normalised as they were in training: a checkpoint records the ``data.mean`` /
``data.std`` its run used (a run checkpoint in its config; ``model-best.pth`` and converted ``.pth`` files under
``normalization``; ``.safetensors`` files in their metadata; a Hugging Face folder in ``preprocessor_config.json``),
and a command that starts from that file takes them when its own ``data.mean`` / ``data.std`` are unset, as timm's
``pretrained_cfg`` and a Hugging Face image processor do. A resumed run takes them from its own checkpoint the same
way, so that it normalises exactly as before the stop without measuring its files again.
"""

from __future__ import annotations

import logging
from typing import Any

from openmae.data.config import DataConfig

# ImageNet's statistics (timm's IMAGENET_DEFAULT_MEAN / _STD), with which the official MAE code normalises every image
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

log = logging.getLogger(__name__)


def stats_record(cfg: DataConfig) -> dict[str, Any]:
    """What a weights file stores of ``cfg``'s normalisation (set: the runs record theirs before they start)."""
    if cfg.mean is None or cfg.std is None:
        raise ValueError("data.mean/std are not set yet: a run records them once they are resolved (keep_stats)")
    record = {"mean": [float(v) for v in cfg.mean], "std": [float(v) for v in cfg.std], "format": cfg.format}
    if cfg.volume_norm != "none":  # the statistics are of volumes on their own scales
        record["volume_norm"] = cfg.volume_norm
    return record


def official_args(obj: Any) -> dict[str, Any] | None:
    """The command line the official MAE code (main_pretrain / main_finetune / main_linprobe.py) saves with each of its
    checkpoints (``args``, read as a dict), or None. Told from other programs' args (timm's train.py saves its own)
    by the options every one of those scripts has: ``--blr`` and ``--data_path``."""
    args = obj.get("args") if isinstance(obj, dict) else None
    return args if isinstance(args, dict) and {"blr", "data_path"} <= set(args) else None


def recorded_stats(obj: Any) -> dict[str, Any] | None:
    """The normalisation a loaded weights file records ({'mean', 'std', 'format'}, and 'volume_norm' when volumes
    were scaled each on its own), or None (a file of another program, or of a run from before runs recorded it)."""
    if not isinstance(obj, dict):
        return None
    record = obj.get("normalization")
    if not isinstance(record, dict):
        config = obj.get("config")
        record = config.get("data") if isinstance(config, dict) else None
    if record is None and official_args(obj) is not None:
        record = _imagenet_record()  # a checkpoint of the official MAE code: it normalises every image so
    if not isinstance(record, dict) or record.get("mean") is None or record.get("std") is None:
        return None
    out = {"mean": [float(v) for v in record["mean"]], "std": [float(v) for v in record["std"]],
           "format": record.get("format", "image")}
    if record.get("volume_norm", "none") != "none":
        out["volume_norm"] = str(record["volume_norm"])
    return out


def of_another_program(obj: Any) -> bool:
    """Whether a loaded weights file that records no normalisation is another program's (the released official
    weights, timm's or Hugging Face's files, a bare state dict) rather than an openmae run's from before runs recorded
    theirs (its config names the dataset, whose statistics it then had)."""
    return not (isinstance(obj, dict) and isinstance(obj.get("config"), dict))


def _imagenet_record() -> dict[str, Any]:
    return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "format": "image"}


def assumed_stats(obj: Any, channels: int) -> dict[str, Any] | None:
    """The normalisation read into weights whose ``recorded_stats`` are None: ImageNet's for another program's RGB
    weights (:func:`_take_imagenets`), else None (the dataset's own or ImageNet's apply, as the command's data says)."""
    return _imagenet_record() if channels == 3 and of_another_program(obj) else None


def _take_imagenets(cfg: DataConfig, origin: str) -> None:
    """RGB weights of another program without a record were trained on images normalised with ImageNet's statistics:
    the official MAE code normalises every image so, and timm's and Hugging Face's MAE models name them (timm's
    ``resolve_data_config`` takes them when a model names none). The dataset's own would shift every input."""
    from openmae.data.datasets import STATS  # datasets imports this module's constants

    cfg.mean, cfg.std = IMAGENET_MEAN, IMAGENET_STD
    own = STATS.get(cfg.name)
    level = logging.WARNING if own is not None and own != (IMAGENET_MEAN, IMAGENET_STD) else logging.INFO
    log.log(level, "%s records no normalisation: its images are taken as normalised with ImageNet's mean/std, as the "
            "official MAE code, timm and Hugging Face train MAE%s; set data.mean/std if it was trained otherwise",
            origin, f", not with {cfg.name}'s own" if level == logging.WARNING else "")


def inherit_stats(cfg: DataConfig, obj: Any, origin: str, channels: int) -> None:
    """Set ``cfg.mean`` / ``cfg.std`` to those ``obj`` (loaded from ``origin``) records, unless they are set
    already or the record is for other inputs (another ``data.format``: other units; another channel count: the
    weights were adapted to these bands). RGB images read with another program's weights that record none take
    ImageNet's (:func:`_take_imagenets`)."""
    if cfg.mean is not None or cfg.std is not None:
        return
    record = recorded_stats(obj)
    if record is None:
        if assumed_stats(obj, channels) is not None and cfg.format == "image":
            _take_imagenets(cfg, origin)
        return
    if record["format"] != cfg.format or len(record["mean"]) != channels:
        log.info("the normalisation recorded in %s (%d channels, data.format=%s) is not used for %d channels of "
                 "data.format=%s", origin, len(record["mean"]), record["format"], channels, cfg.format)
        return
    if record.get("volume_norm", "none") != cfg.volume_norm:
        log.warning("%s was trained on volumes scaled with data.volume_norm=%s, but this run reads them with "
                    "data.volume_norm=%s: its inputs are on another scale, and the normalisation recorded is not used; "
                    "set data.volume_norm=%s", origin, record.get("volume_norm", "none"), cfg.volume_norm,
                    record.get("volume_norm", "none"))
        return
    cfg.mean, cfg.std = tuple(record["mean"]), tuple(record["std"])
    log.info("data.mean=[%s] data.std=[%s]: the normalisation %s was trained with (set data.mean/std to change it)",
             ",".join(f"{v:.6g}" for v in cfg.mean), ",".join(f"{v:.6g}" for v in cfg.std), origin)
