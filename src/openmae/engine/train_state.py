"""A training run's whole state in a checkpoint and back: model, optimizer, loss scaler, the task's own state,
every rank's random generators and the position in the data, so that a resumed run continues exactly."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from openmae.config import to_dict
from openmae.engine.checkpoint import (
    CheckpointError,
    CheckpointManager,
    Resume,
    changed_settings,
    resume_batch,
    rng_state,
    set_rng_state,
)
from openmae.engine.distributed import DistInfo, wait_for_main

if TYPE_CHECKING:
    from pathlib import Path

    from openmae.engine.loop import Task

log = logging.getLogger("openmae.train")


def _options() -> StateDictOptions:
    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def _gather_rng(info: DistInfo, state: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every rank's random generators' ``state`` (their state now by default), on every rank."""
    state = rng_state() if state is None else state
    if not info.enabled:
        return [state]
    import torch.distributed as dist

    states: list[Any] = [None] * info.world_size
    dist.all_gather_object(states, state)
    return states


def save(ckpts: CheckpointManager, epoch: int, batch_in_epoch: int, step: int, task: Task, model: nn.Module,
         optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, config: Any, info: DistInfo,
         keep: bool = False, rng: dict[str, Any] | None = None) -> None:
    """Write the run's state after ``step`` (its next batch: ``batch_in_epoch`` of ``epoch``) on the main rank; every
    rank takes part (sharded weights and the generators are gathered) and returns once it is written. ``rng``: the
    generators' state to save instead of this moment's (a stop during an evaluation saves the state before it)."""
    state_model = get_model_state_dict(model, options=_options())
    state_optim = get_optimizer_state_dict(model, optimizer, options=_options())
    rngs = _gather_rng(info, rng)
    if info.is_main:
        state = {"model": state_model, "optimizer": state_optim, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                 "step": step, "rng": rngs, "config": to_dict(config), "model_config": task.model_config,
                 "task": task.name, "task_state": task.extra_state() if hasattr(task, "extra_state") else {}}
        if getattr(task, "classes", None):  # a classifier's outputs' names, carried into model-last.pth
            state["classes"] = task.classes
        if getattr(task, "reference", None):  # a pretraining run's held-out errors' Gaussian, carried there too
            state["reconstruction_reference"] = task.reference
        if scaler.is_enabled():
            state["scaler"] = scaler.state_dict()
        ckpts.save(state, step, keep=keep)
    wait_for_main(info)


def refuse_other_tuning(state: dict[str, Any], path: Path, section: str, now: int | None) -> None:
    """A checkpoint of a run that trained other parameters (``<section>.tune_blocks``) is refused: its optimizer
    holds the state of those."""
    saved = state.get("config", {}).get(section, {}).get("tune_blocks")
    if saved != now:
        raise CheckpointError(f"{path} was written by a run with {section}.tune_blocks={saved}, but this run has "
                              f"{now}: its optimizer holds the state of other parameters; resume with "
                              f"{section}.tune_blocks={saved}, or start a new run (another -o) from its weights "
                              f"with {section}.init={path}")


def restore(resume: Resume, task: Task, model: nn.Module, optimizer: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler, config: Any, batch_size: int, info: DistInfo) -> tuple[int, int, int]:
    """Load ``resume``'s state into the run (refused when it is another task's or another model's); returns the
    epoch, the batch in it and the step to go on from. Settings changed since the checkpoint are logged: the run
    follows them, no longer the exact continuation of the one that saved."""
    path, state = resume.path, resume.state
    if state.get("task", task.name) != task.name:
        raise CheckpointError(f"{path} was written by `openmae {state['task']}`, but this run is `openmae "
                              f"{task.name}`; give this run its own output folder (-o), or resume that run with "
                              f"`openmae {state['task']}`")
    if state.get("model_config") != task.model_config:
        raise CheckpointError(f"{path} was written for model {state.get('model_config')}, "
                              f"but this run builds {task.model_config}; use the same model settings to resume")
    if hasattr(task, "check_resume"):
        task.check_resume(state, path)
    set_model_state_dict(model, state["model"], options=_options())
    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=_options())
    if "scaler" in state and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    if hasattr(task, "load_extra_state"):
        task.load_extra_state(state.get("task_state", {}), path)
    epoch, step = state["epoch"], state["step"]
    start_batch = resume_batch(state, batch_size, info.world_size)
    rngs = state["rng"]
    set_rng_state(rngs[info.rank] if len(rngs) == info.world_size else rngs[0])
    if info.is_main:
        log.info("resumed from %s (epoch %d, batch %d, step %d)", path, epoch, start_batch, step)
        changed = changed_settings(state.get("config"), to_dict(config))
        if len(rngs) != info.world_size:
            changed.append(f"processes: {len(rngs)} -> {info.world_size}")
        if changed:  # the run goes on with them, no longer the exact continuation of the one that saved
            log.warning("resumed with settings changed since the checkpoint, which the rest of the run follows: "
                        "%s%s", "; ".join(changed), "" if start_batch == state["batch_in_epoch"] else
                        f" (its epoch goes on at batch {start_batch}, not {state['batch_in_epoch']}: the first "
                        "whose images are unused with the new global batch)")
    return epoch, start_batch, step
