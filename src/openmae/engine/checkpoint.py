"""Run checkpoints: atomic writes, a checksum, newest-valid discovery and exact-resume state.

A checkpoint is a plain dict of tensors, numbers, strings and lists (loadable with ``weights_only=True``):
model, optimizer, scaler, epoch, position in the epoch, optimizer step, RNG states, config, model config.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from openmae.convert.files import UnreadableCheckpointError, load_file, save_file

log = logging.getLogger("openmae.checkpoint")
NAME = re.compile(r"^checkpoint-(\d{9})\.pth$")
# what model-last.pth carries beside the weights: a classifier's class names, a pretraining run's reference of its
# held-out images' reconstruction errors (openmae.eval.typicality)
CARRIED = ("classes", "reconstruction_reference")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupted or does not fit."""


def rng_state() -> dict[str, Any]:
    """Every RNG the training step may draw from, in a weights_only-loadable form."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _digest(state: dict[str, Any]) -> str:
    """sha256 over the bytes of the model tensors and of the task's own weights (task_state, e.g. an EMA):
    detects silent corruption that still unpickles. Checkpoints without task_state digest as before."""
    h = hashlib.sha256()
    tensors = dict(state["model"])
    for name, part in (state.get("task_state") or {}).items():
        tensors.update({f"task_state.{name}.{k}": v for k, v in part.items() if isinstance(v, torch.Tensor)})
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class CheckpointManager:
    """``checkpoint-<step>.pth`` files in the run folder; the newest ``keep_last`` are kept (plus ``keep``
    ones marked as periodic)."""

    def __init__(self, run_dir: str | Path, keep_last: int = 2) -> None:
        self.run_dir = Path(run_dir)
        self.keep_last = keep_last

    def path(self, step: int) -> Path:
        return self.run_dir / f"checkpoint-{step:09d}.pth"

    def list(self) -> list[Path]:
        """Checkpoints by step, newest first."""
        if not self.run_dir.is_dir():
            return []
        found = [p for p in self.run_dir.iterdir() if NAME.match(p.name)]
        return sorted(found, key=lambda p: int(NAME.match(p.name).group(1)), reverse=True)

    def save(self, state: dict[str, Any], step: int, keep: bool = False) -> Path:
        state = {**state, "sha256": _digest(state), "keep": keep}
        path = save_file(state, self.path(step))
        save_file({"model": state["model"], "model_config": state.get("model_config"), "config": state.get("config"),
                   **{key: state[key] for key in CARRIED if key in state}}, self.run_dir / "model-last.pth")
        self._prune()
        return path

    def _prune(self) -> None:
        recent = 0
        for path in self.list():
            recent += 1
            if recent <= self.keep_last:
                continue
            try:
                keep = bool(load_file(path).get("keep", False))
            except (RuntimeError, EOFError, OSError, ValueError) as err:  # unreadable old ones are pruned, and said so
                log.warning("removing unreadable old checkpoint %s (%s)", path, err)
                keep = False
            if not keep:
                path.unlink(missing_ok=True)

    @staticmethod
    def load(path: str | Path) -> dict[str, Any]:
        """Load and validate one checkpoint; raises :class:`CheckpointError` when it is damaged."""
        path = Path(path)
        try:
            state = load_file(path)
        except (RuntimeError, EOFError, OSError, ValueError) as err:
            what = err.what if isinstance(err, UnreadableCheckpointError) else \
                f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            raise CheckpointError(f"checkpoint {path} cannot be read ({what}); it is truncated or corrupted") from None
        if not isinstance(state, dict) or "model" not in state or "step" not in state:
            raise CheckpointError(f"{path} is not an openmae run checkpoint (no 'model'/'step')")
        if "sha256" in state and state["sha256"] != _digest(state):
            raise CheckpointError(f"checkpoint {path} fails its checksum: the weights were changed or corrupted")
        return state

    def remove_temporary(self) -> list[Path]:
        """Delete temporary files left by a save that was killed half-way (never a finished checkpoint)."""
        if not self.run_dir.is_dir():
            return []
        stale = [p for p in self.run_dir.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]
        for path in stale:
            log.warning("removing %s, left by an interrupted save", path.name)
            path.unlink(missing_ok=True)
        return stale

    def latest_valid(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that loads and passes its checksum; damaged ones are reported and skipped."""
        for path in self.list():
            try:
                return path, self.load(path)
            except CheckpointError as err:
                log.warning("%s; trying the previous checkpoint", err)
        return None


@dataclass
class Resume:
    """The checkpoint a run continues from."""

    path: Path
    state: dict[str, Any]

    @property
    def model_config(self) -> dict[str, Any] | None:
        return self.state.get("model_config")


STOPPED = "stopped.json"  # how the run last stopped on a signal (by, step, when), while it is stopped so
RUN_FILES = ("model-last.pth", "model-best.pth", "model-timm.safetensors", "metrics.jsonl", STOPPED)  # + checkpoints, tb/


def earlier_run(run_dir: str | Path) -> list[Path]:
    """The files of a run already in ``run_dir`` (checkpoints newest first, then :data:`RUN_FILES` and ``tb``)."""
    run_dir = Path(run_dir)
    found = CheckpointManager(run_dir).list() + [run_dir / name for name in (*RUN_FILES, "tb")]
    return [path for path in found if path.exists()]


def _progress(run_dir: str | Path) -> str:
    """How far the run in ``run_dir`` got ("a pretrain run stopped at epoch 1.50 of 3: "), or "" when unknown."""
    from openmae.engine.run_status import is_run_folder, run_status  # it reads checkpoints' names from here

    try:
        status = run_status(run_dir) if is_run_folder(run_dir) else None
    except (OSError, ValueError) as err:  # a config.yaml or metrics.jsonl that does not parse: the files alone
        log.debug("no progress read from %s: %s", run_dir, err)
        return ""
    if status is None or not status["step"]:  # (its state says "running": this run holds the folder's lock now)
        return ""
    finished = status["epochs"] is not None and status["epoch"] >= status["epochs"] and not status["stopped_by"]
    where = "finished" if finished else f"stopped at epoch {status['epoch']:.2f} of {status['epochs']}"
    return f"a {status['task']} run {where}: "


LOGS_ONLY = ("metrics.jsonl", "tb", STOPPED)  # what a run that saved nothing leaves


def start_fresh(run_dir: str | Path, overwrite: bool, found: list[Path], is_main: bool, resume_auto: bool = False
                ) -> None:
    """A new run in ``run_dir``: refused when ``found`` (:func:`earlier_run`, as the main rank saw it) names an earlier
    run's files, whose checkpoints and metrics it would replace, unless ``overwrite``; then the main rank removes
    them first, so that a later ``resume=auto`` cannot take the old run's checkpoint for this one's.

    ``resume_auto``: the run was asked to continue (``resume=auto``, a requeued job's command) and found no valid
    checkpoint. An earlier run that left only its logs (stopped before its first save) has nothing to continue
    from, so this one starts over in its place; one that left checkpoints none of which loads, or model files, is
    refused, since starting over would replace them."""
    if not found:
        return
    starts_over = resume_auto and not overwrite and all(path.name in LOGS_ONLY for path in found)
    if not overwrite and not starts_over:
        shown = ", ".join(path.name for path in found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
        ways = "continue it with --resume auto (train.resume=auto), " if not resume_auto else ""
        saved = " and no checkpoint of it loads" if resume_auto else ""
        raise FileExistsError(f"{run_dir} already holds a run ({_progress(run_dir)}{shown}){saved}; {ways}give this "
                              "run a folder of its own (-o), or set train.overwrite=true to start over there (those "
                              "files are removed)")
    if is_main:
        names = ", ".join(p.name for p in found)
        log.warning(f"resume=auto: the earlier run in {run_dir} stopped before it saved a checkpoint "
                    f"({_progress(run_dir).rstrip(': ') or 'no step logged'}), so there is nothing to continue from; "
                    f"starting over (its {names} removed)" if starts_over else
                    f"train.overwrite=true: removing the earlier run's {names} from {run_dir}")
        for path in found:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


# settings that say where a run is and how it is driven, not what it computes: not reported when a resume changes them
RUN_PLACE = ("train.output_dir", "train.resume", "train.overwrite", "train.progress", "train.halt_after_steps",
             "data.root", "data.path")


def changed_settings(saved: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """``section.key: old -> new`` for each setting a resumed run changed since its checkpoint was written (both as
    :func:`openmae.config.to_dict` gives them), but the places in :data:`RUN_PLACE`."""
    if not saved:
        return []
    changed = []
    for section, values in now.items():
        before = saved.get(section, {})
        if not isinstance(values, dict) or not isinstance(before, dict):
            continue
        for key, value in values.items():
            name = f"{section}.{key}"
            if key in before and before[key] != value and name not in RUN_PLACE:
                changed.append(f"{name}: {before[key]} -> {value}")
    return changed


def resume_batch(state: dict[str, Any], batch_size: int, world_size: int) -> int:
    """The batch of the checkpoint's epoch to resume at, with this run's batch per process and process count.
    A rank takes every ``world_size``-th index of the epoch's order, so after ``b`` batches the job has used the
    order's first ``b x batch x world`` images, whatever the split: a resume with another global batch (fewer GPUs,
    a batch that fits) starts at the first batch whose images are unused (up to one batch seen twice), not at the
    same batch number, which would skip or repeat images."""
    start = state["batch_in_epoch"]
    saved = (state.get("config") or {}).get("train", {}).get("batch_size", batch_size) * len(state.get("rng", [0]))
    if start == 0 or saved == batch_size * world_size:
        return start
    return start * saved // (batch_size * world_size)


def find_resume(resume: str, run_dir: str | Path, is_main: bool) -> Resume | None:
    """The checkpoint ``train.resume`` names (``auto``: the newest valid one in ``run_dir``, None when there is
    none; a path: that file, which must load). Looked up before the task is built, so that a resumed task does not
    read its init weights only to have them replaced."""
    if not resume:
        return None
    ckpts = CheckpointManager(run_dir)
    if is_main:
        ckpts.remove_temporary()
    if resume != "auto":
        return Resume(Path(resume), ckpts.load(resume))
    found = ckpts.latest_valid()
    if found is None:
        log.info("resume=auto: no valid checkpoint in %s, starting a new run", run_dir)
        return None
    return Resume(*found)
