"""A cached linear probe's features kept on disk (``linprobe.feature_cache``), found again by everything they depend
on: another probe of the same encoder on the same images (a learning-rate sweep, a resumed run) reads them instead of
running the encoder over the images again (ImageNet's 1.28 M images: many GPU-minutes a probe)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from openmae.convert.files import UnreadableCheckpointError, load_file, save_file
from openmae.data.datasets import ImageSource
from openmae.data.filelist import FileList
from openmae.data.stamps import file_stamps

log = logging.getLogger("openmae.features")

VERSION = 1  # of how the features are computed: a change there must not read files of the old way
# data settings that change nothing in the evaluation transform's output (how the images are read, not which)
NOT_IN_KEY = ("num_workers", "device_ahead", "download", "volume_cache", "jpeg_decoder")


def weights_digest(model: nn.Module, skip: str = "head.") -> str:
    """A digest of every tensor of ``model`` but those under ``skip`` (the probe's head, drawn afresh by each run):
    two encoders with the same digest compute the same features."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith(skip):
            continue
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def items_digest(source: ImageSource) -> str:
    """A digest of what each item of ``source`` is (its file, or its place in a named dataset), in order, and of its
    file's size and modification time: a folder with other images of the same count, or an image rewritten in place
    under the same name, keys other features. A stat a file (:func:`openmae.data.stamps.file_stamps`, threaded on a
    network file system): 50,000 CIFAR-10 files in 0.45 s on a 2-core machine (1.2 s through a view of them), against
    the encoder's minutes over them."""
    digest = hashlib.blake2b(digest_size=16)
    listed = getattr(source, "files", None)
    listed = listed if isinstance(listed, FileList) and len(listed) == len(source) else None  # a file an item
    found: dict[Path, None] = {}  # else each item's file once, in order (a volume's slices share theirs)
    for index in range(len(source)):
        digest.update(f"{source.describe(index)}\n".encode())
        if listed is None and (path := source.file(index)[0]) is not None:
            found.setdefault(path)
    if listed is not None or found:
        digest.update(file_stamps(listed if listed is not None else FileList(found)).encode())
    return digest.hexdigest()


def feature_key(role: str, split: str, source: ImageSource, weights: str, model_config: dict[str, Any],
                data: dict[str, Any], **how: Any) -> dict[str, Any]:
    """Everything the features of ``source``'s images of ``split`` (the probe's ``role`` for them: train, eval,
    report) depend on: the images, the encoder's weights and architecture, the data settings, and ``how`` they are
    pooled."""
    return {"version": VERSION, "role": role, "split": split, "count": len(source), "items": items_digest(source),
            "weights": weights, "model_config": model_config,
            "data": {k: v for k, v in data.items() if k not in NOT_IN_KEY}, **how}


def cache_path(folder: str | Path, key: dict[str, Any]) -> Path:
    name = hashlib.blake2b(json.dumps(key, sort_keys=True, default=str).encode(), digest_size=10).hexdigest()
    return Path(folder) / f"{key['role']}-{name}.pt"


def read_features(folder: str | Path, key: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The features (N, D) and labels (N,) kept under ``key``, or None (none kept, or a file that cannot be read,
    which is said and computed again)."""
    path = cache_path(folder, key)
    if not path.is_file():
        return None
    try:
        kept = load_file(path)
        feats, labels = kept["feats"], kept["labels"]
    except (UnreadableCheckpointError, KeyError, TypeError) as err:
        log.warning("cannot read the kept features %s (%s): computing them again", path, str(err).splitlines()[0])
        return None
    if len(feats) != key["count"] or len(labels) != key["count"]:
        log.warning("%s holds %d features for %d images: computing them again", path, len(feats), key["count"])
        return None
    return feats, labels


def say_read(folder: str | Path, key: dict[str, Any], count: int) -> None:
    log.info("read the %s features of %d images from %s (kept by an earlier probe of the same encoder and images)",
             key["role"], count, cache_path(folder, key))


def write_features(folder: str | Path, key: dict[str, Any], feats: torch.Tensor, labels: torch.Tensor) -> None:
    """Keep the features under ``key`` (written atomically: a probe stopped while writing leaves no partial file)."""
    path = save_file({"feats": feats.contiguous(), "labels": labels, "key": json.dumps(key, default=str)},
                     cache_path(folder, key))
    log.info("kept the %s features in %s (%.1f MB; linprobe.feature_cache)", key["role"], path,
             path.stat().st_size / 1e6)
