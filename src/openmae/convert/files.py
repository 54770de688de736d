"""Reading and writing weight files safely: never unpickle arbitrary objects, never leave half a file.

``.safetensors`` files go through safetensors; everything else through ``torch.load(weights_only=True)``,
which refuses any pickled object that is not a tensor or a plain container/number/string. A Hugging Face model
folder (``save_pretrained``, a hub download) reads as one checkpoint: its weights, the architecture of its
``config.json`` and the normalisation of its ``preprocessor_config.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from openmae.convert.timm_train import timm_train_stats

log = logging.getLogger(__name__)
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # a folder's weights: one file, or shards with an index
RUN_WEIGHTS = "model-last.pth"  # what a run folder given as weights reads (written with each of its checkpoints)
METADATA_KEYS = ("model_config", "normalization")  # what an openmae .safetensors file carries beside its tensors


class UnsafeCheckpointError(ValueError):
    """The file holds pickled Python objects other than tensors and plain data; it was not executed."""


class UnreadableCheckpointError(ValueError):
    """The file is not a weights file that torch or safetensors can read: cut short (an interrupted download or
    copy), damaged, or of another kind. ``what``: the reader's own error, in a line."""

    def __init__(self, message: str, what: str) -> None:
        super().__init__(message)
        self.what = what


def _said(err: BaseException, marker: str) -> str:
    """The line of ``err``'s message holding ``marker`` (torch's messages run to a dozen lines of advice), else its
    first line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return next((line for line in lines if marker in line), lines[0] if lines else "")


def _unreadable(path: Path, err: BaseException) -> UnreadableCheckpointError:
    said = _said(err, "Unsupported")
    what = f"{type(err).__name__}: {said}" if said else type(err).__name__
    return UnreadableCheckpointError(
        f"could not read {path} ({path.stat().st_size:,} bytes) as a weights file ({what}): it is cut short "
        "(an interrupted download or copy), damaged, or not a PyTorch / safetensors file; download or copy it again",
        what)


# a Hugging Face hub repository: owner/name, optionally as timm writes it (hf-hub:owner/name) and at a revision (@rev)
HUB_ID = re.compile(r"^(?:hf[-_]hub:)?([A-Za-z0-9][\w.-]*/[\w.-]+)(?:@([\w./-]+))?$")
# what a hub repository's weights are (one file or shards) and the configs that describe them
HUB_FILES = ["config.json", "preprocessor_config.json", "model.safetensors", "model-*.safetensors",
             "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model-*.bin", "pytorch_model.bin.index.json"]


def fetch(source: str) -> Path | None:
    """Where the weights ``source`` names lie on this machine when it is no local path: an ``https://`` address
    (downloaded once into torch's hub cache, ``$TORCH_HOME/hub/checkpoints``, as ``torch.hub`` and timm keep
    downloads; the official MAE checkpoints are such addresses), or a Hugging Face hub repository
    ``owner/name[@revision]`` (its weights and configs, through huggingface_hub's cache; ``HF_HUB_OFFLINE=1`` reads
    the cache alone, ``HF_TOKEN`` opens gated repositories). None for anything else."""
    if source.startswith(("https://", "http://")):
        return _download(source)
    match = HUB_ID.match(source)
    if match is None or Path(source).exists() or Path(source).parent.is_dir():  # runs/typo: a local path, mistyped
        return None
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(match[1], revision=match[2], allow_patterns=HUB_FILES))
    except Exception as err:  # noqa: BLE001 - huggingface_hub's errors (not found, gated, offline, HTTP) share no base
        said = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise FileNotFoundError(
            f"no file or folder {source} here, and the Hugging Face hub model {match[1]} could not be had "
            f"({type(err).__name__}: {said}); check the path or the model's name, the network (HF_HUB_OFFLINE=1 reads "
            "only what was downloaded before), or HF_TOKEN for a gated model") from None


def _download(url: str) -> Path:
    """``url``'s file in torch's hub cache, downloaded first when it is not there (to a temporary file, then
    renamed: an interrupted download leaves nothing that would be read as the file)."""
    import urllib.error
    from urllib.parse import urlparse

    target = Path(torch.hub.get_dir()) / "checkpoints" / (Path(urlparse(url).path).name or "weights.pth")
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s to %s", url, target)
        try:
            torch.hub.download_url_to_file(url, str(target), progress=True)
        except (OSError, urllib.error.URLError, ValueError) as err:
            raise FileNotFoundError(f"could not download {url} ({type(err).__name__}: {err}); check the address and "
                                    "the network, or download the file yourself and give its path") from None
    return target


def _namespace_allowed() -> contextlib.AbstractContextManager:
    """``argparse.Namespace`` among the globals a weights-only load may build, for this load (torch >= 2.5), or
    from now on in this process (torch 2.4, which has no context for it)."""
    if hasattr(torch.serialization, "safe_globals"):
        return torch.serialization.safe_globals([argparse.Namespace])
    torch.serialization.add_safe_globals([argparse.Namespace])
    return contextlib.nullcontext()


def load_file(path: str | os.PathLike) -> Any:
    """Load a ``.pth``/``.pt``/``.bin`` (tensors and plain data only) or ``.safetensors`` file onto the CPU, or a
    Hugging Face model folder (:func:`load_hf_folder`). A ``.safetensors`` file whose metadata holds a model config
    (``openmae convert --to openmae``) reads as ``{'model': tensors, 'model_config': ..., 'normalization': ...}``.
    An ``https://`` address or a Hugging Face hub model name is downloaded first (:func:`fetch`)."""
    fetched = fetch(path) if isinstance(path, str) else None
    path = fetched or Path(path)
    if path.is_dir():
        run_weights = path / RUN_WEIGHTS
        if run_weights.is_file() and not any((path / name).is_file() for name in HF_WEIGHTS):
            best = path / "model-best.pth"
            log.info("%s is a run folder: reading its %s (the weights of its last checkpoint)%s", path, RUN_WEIGHTS,
                     f"; for the best evaluation's weights give {best}" if best.is_file() else "")
            return load_file(run_weights)
        return load_hf_folder(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint file or model folder: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as fh:  # one opening for the tensors and the metadata
                tensors = {key: fh.get_tensor(key) for key in fh.keys()}
                meta = fh.metadata() or {}
        except Exception as err:  # safetensors' own SafetensorError derives from Exception alone
            raise _unreadable(path, err) from None
        if "model_config" not in meta:
            return tensors
        return {"model": tensors, **{k: json.loads(meta[k]) for k in METADATA_KEYS if k in meta}}
    try:
        # the official MAE code saves its command line's argparse.Namespace with every checkpoint (args): an attribute
        # holder rebuilt from plain data, without running code, read as a dict
        with _namespace_allowed():
            obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, dict) and isinstance(obj.get("args"), argparse.Namespace):
            obj = {**obj, "args": vars(obj["args"])}
        if (stats := timm_train_stats(obj)) is not None and "normalization" not in obj:
            obj = {**obj, "normalization": stats}  # a timm train.py checkpoint's: as the run normalised
        return obj
    except pickle.UnpicklingError as err:
        # torch names what it refused on a line of its message ("Unsupported global: GLOBAL builtins.print ...",
        # "Trying to load unsupported GLOBAL posix.system ..."); bytes that are no pickle at all fail there too, as an
        # "Unsupported operand"
        if "Unsupported operand" in str(err):
            raise _unreadable(path, err) from None
        said = _said(err, "GLOBAL")
        raise UnsafeCheckpointError(
            f"refused to load {path}: it contains pickled Python objects other than tensors and plain data, "
            f"which could run code when unpickled (torch.load weights_only=True said: {said.split('. ')[0]}). "
            f"If you trust the file, re-save its state dict as safetensors or a plain dict of tensors."
        ) from None
    except (EOFError, OSError, RuntimeError, KeyError, IndexError, ValueError, UnicodeDecodeError) as err:
        # what torch.load raises on a cut zip archive (OSError, RuntimeError) or bytes of another kind (the rest)
        raise _unreadable(path, err) from None


def weights_metadata(model_config: dict[str, Any], normalization: dict[str, Any] | None) -> dict[str, Any]:
    """What a ``.safetensors`` weights file carries beside its tensors (:data:`METADATA_KEYS`): the architecture,
    whose head counts the shapes do not hold, and the normalisation the weights were trained with, if known."""
    return {"model_config": model_config, **({"normalization": normalization} if normalization else {})}


def _umask() -> int:
    """The process's umask: read from /proc where it is there (setting it to read it back would, for that moment,
    change what every thread creates)."""
    status = Path("/proc/self/status")  # Linux 4.7 and later; elsewhere (macOS, Windows) not there
    lines = status.read_text().splitlines() if status.is_file() else []
    for line in lines:
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_file(obj: Any, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
    """Write atomically: a temporary file in the same folder, fsync, then rename over ``path``.

    A crash or full disk during the write leaves any previous file at ``path`` untouched; the file's permissions
    are those the umask gives a new file (readable by the group and others, usually), as a plain write's.
    ``.safetensors`` takes a flat dict of tensors (and ``metadata``, stored as JSON strings, read back by
    :func:`load_file`); other suffixes are written with ``torch.save``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # mkstemp's file is private (0600): made as open() makes one, by the umask
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            if path.suffix == ".safetensors":
                from safetensors.torch import save

                text = {k: json.dumps(v) for k, v in (metadata or {}).items()} or None
                fh.write(save({k: v.contiguous() for k, v in obj.items()}, metadata=text))
            else:
                torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# a key every ViT state dict has, in openmae / official / timm names and in Hugging Face's
ANCHORS = ("patch_embed.proj.weight", "vit.embeddings.patch_embeddings.projection.weight")


def strip_wrapper_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``sd`` with the prefix a training wrapper put before every model key taken off: DDP's ``module.``,
    ``torch.compile``'s ``_orig_mod.``, Lightning's ``model.`` (or whatever a LightningModule named its network),
    ``backbone.`` / ``encoder.`` of a larger model; found as what precedes a key every ViT has
    (:data:`ANCHORS`). Keys outside the prefix (a loss module's, another head's) are left out, and logged."""
    if any(anchor in sd for anchor in ANCHORS):
        return sd
    found = [key[: -len(anchor)] for key in sd for anchor in ANCHORS if key.endswith("." + anchor)]
    if len(found) != 1:  # none, or several models in one file (a teacher and a student): the caller says no fit
        return sd
    prefix = found[0]
    inside = {key[len(prefix):]: value for key, value in sd.items() if key.startswith(prefix)}
    outside = [key for key in sd if not key.startswith(prefix)]
    log.info("weights read from under the prefix %r (%d tensors)%s", prefix, len(inside),
             f"; {len(outside)} outside it left out: {', '.join(outside[:5])}{' ...' if len(outside) > 5 else ''}"
             if outside else "")
    return inside


def averaged_weights(obj: Any, path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint ``obj`` with the weights it averages (an EMA) in place of its trained ones: timm train.py's
    ``state_dict_ema``, an openmae fine-tuning run checkpoint's (``task_state['ema']``); a ValueError naming what the
    file holds otherwise."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict_ema"), dict):
        return {**obj, "state_dict": obj["state_dict_ema"]}
    task_state = obj.get("task_state") if isinstance(obj, dict) else None
    if isinstance(task_state, dict) and isinstance(task_state.get("ema"), dict):
        return {**obj, "model": task_state["ema"]}
    held = f"keys {sorted(obj)[:8]}" if isinstance(obj, dict) else type(obj).__name__
    raise ValueError(f"model.ema=true: {path} holds no averaged weights ({held}); they are in a checkpoint of timm's "
                     "train.py run with --model-ema (state_dict_ema) or of `openmae finetune finetune.model_ema=true` "
                     "(whose model-best.pth holds them as its weights); set model.ema=false to read the file's own")


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint: ``{'model': sd}`` (official, openmae), ``{'state_dict': sd}`` or sd,
    without a wrapper's key prefix (:func:`strip_wrapper_prefix`)."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state"):
            if key in obj and isinstance(obj[key], dict):
                return strip_wrapper_prefix(obj[key])
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return strip_wrapper_prefix(obj)
    raise ValueError(
        f"no state dict found: expected a dict of tensors or one under 'model'/'state_dict', "
        f"got {type(obj).__name__} with keys {list(obj)[:8] if isinstance(obj, dict) else '-'}"
    )


def load_hf_folder(folder: Path) -> dict[str, Any]:
    """A Hugging Face model folder as a checkpoint: ``{'model': its tensors}`` (``model.safetensors`` or
    ``pytorch_model.bin``, or their shards through the ``.index.json``), with ``model_config`` from a ViTMAE
    ``config.json`` (head counts cannot be read from tensor shapes) and ``normalization`` from
    ``preprocessor_config.json`` (its ``image_mean`` / ``image_std``)."""
    from openmae.convert.hf import mae_config_from_hf

    index = next((folder / f"{name}.index.json" for name in HF_WEIGHTS if (folder / f"{name}.index.json").is_file()),
                 None)
    if index is not None:
        tensors: dict[str, torch.Tensor] = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            tensors.update(unwrap_state_dict(load_file(folder / shard)))
    else:
        weights = next((folder / name for name in HF_WEIGHTS if (folder / name).is_file()), None)
        if weights is None and (folder / "metrics.jsonl").is_file():
            raise FileNotFoundError(f"{folder} is a run folder without weights yet: it has no {RUN_WEIGHTS} (the run "
                                    "stopped before its first checkpoint, or has not reached it); give a weights file")
        if weights is None:
            raise FileNotFoundError(f"{folder} is a folder without {' or '.join(HF_WEIGHTS)} (nor their sharded "
                                    "index): give a weights file, or a Hugging Face model folder")
        tensors = unwrap_state_dict(load_file(weights))
    out: dict[str, Any] = {"model": tensors}
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    if config.get("model_type") == "vit_mae":
        out["model_config"] = mae_config_from_hf(config).to_dict()
    else:  # a timm model folder (timm's save_for_hf, `openmae convert --to timm`, a timm hub download)
        from openmae.convert.timm_folder import read_timm_config

        out.update(read_timm_config(config))
        if isinstance(config.get("label_names"), list):  # a classifier's class names, as timm keeps them
            out["classes"] = config["label_names"]
        if config.get("problem_type") == "multi_label_classification":  # several classes an image (transformers')
            out["multi_label"] = True
        if isinstance(config.get("decision_thresholds"), list):  # each class's (a classifier of several an image)
            out["thresholds"] = [float(t) for t in config["decision_thresholds"]]
        if isinstance(config.get("calibration_temperature"), (int, float)):  # a classifier's, temperature scaling's
            out["temperature"] = float(config["calibration_temperature"])
    processor = folder / "preprocessor_config.json"
    if processor.is_file():
        p = json.loads(processor.read_text())
        if p.get("image_mean") is not None and p.get("image_std") is not None:
            channels = int(config.get("num_channels", 3))
            as_list = lambda v: [float(x) for x in v] if isinstance(v, list) else [float(v)] * channels
            out["normalization"] = {"mean": as_list(p["image_mean"]), "std": as_list(p["image_std"]), "format": "image"}
    return out
