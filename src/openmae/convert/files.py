"""Reading and writing weight files safely: never unpickle arbitrary objects, never leave half a file.

``.safetensors`` files go through safetensors; everything else through ``torch.load(weights_only=True)``,
which refuses any pickled object that is not a tensor or a plain container/number/string.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch


class UnsafeCheckpointError(RuntimeError):
    """The file holds pickled Python objects other than tensors and plain data; it was not executed."""


def load_file(path: str | os.PathLike) -> Any:
    """Load a ``.pth``/``.pt``/``.bin`` (tensors and plain data only) or ``.safetensors`` file onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file as st_load

        return st_load(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"refused to load {path}: it contains pickled Python objects other than tensors and plain data, "
            f"which could run code when unpickled (torch.load weights_only=True said: {str(err).splitlines()[0]}). "
            f"If you trust the file, re-save its state dict as safetensors or a plain dict of tensors."
        ) from None


def save_file(obj: Any, path: str | os.PathLike) -> Path:
    """Write atomically: a temporary file in the same folder, fsync, then rename over ``path``.

    A crash or full disk during the write leaves any previous file at ``path`` untouched.
    ``.safetensors`` takes a flat dict of tensors; other suffixes are written with ``torch.save``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if path.suffix == ".safetensors":
                from safetensors.torch import save

                fh.write(save({k: v.contiguous() for k, v in obj.items()}))
            else:
                torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint: ``{'model': sd}`` (official, openmae), ``{'state_dict': sd}`` or sd."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state"):
            if key in obj and isinstance(obj[key], dict):
                return obj[key]
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise ValueError(
        f"no state dict found: expected a dict of tensors or one under 'model'/'state_dict', "
        f"got {type(obj).__name__} with keys {list(obj)[:8] if isinstance(obj, dict) else '-'}"
    )
