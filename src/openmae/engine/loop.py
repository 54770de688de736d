"""The one training loop. Pretraining, fine-tuning and linear probing differ only by a :class:`Task`."""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from openmae.config import dump_yaml
from openmae.data.ahead import DeviceAhead
from openmae.data.loader import (
    Batch,
    ResumableSampler,
    SeededSamples,
    StopAsked,
    end_workers,
    make_loader,
    stops_between_batches,
)
from openmae.data.normalization import inherit_stats
from openmae.data.ranks import BuildStopped, cut_by, shared_by_ranks
from openmae.engine.checkpoint import STOPPED, CheckpointManager, Resume, earlier_run, find_resume, rng_state, start_fresh
from openmae.engine.config import TrainConfig
from openmae.engine.distributed import DistInfo, all_reduce_mean, parallelize
from openmae.engine.host_memory import keep_freed_host_memory
from openmae.engine.logging import MetricsLog, read_metrics
from openmae.engine.optim import build_optimizer
from openmae.engine.precision import autocast_dtype
from openmae.engine.preempt import StopSignals, torchrun_grace_warning
from openmae.engine.schedule import effective_lr, lr_at
from openmae.engine.train_state import restore, save
from openmae.eval.progress import on_screen

log = logging.getLogger("openmae.train")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf; the message names the optimizer step."""


@dataclass
class StepOutput:
    """The loss to minimise and extra scalars to log (detached tensors; averaged over the log interval)."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class Task(Protocol):
    """What differs between pretraining, fine-tuning and probing. Optional hooks, called when a task has them:
    ``after_step(step)`` after each optimizer update (e.g. a weight average), and ``extra_state() -> dict`` /
    ``load_extra_state(state, path)`` for what the task keeps beyond its model (saved with every checkpoint and
    restored on resume, so that resuming stays exact); ``check_resume(state, path)`` refuses a checkpoint whose
    run this one cannot continue (raising ``CheckpointError``) before anything is loaded.

    ``after_epoch`` runs on every rank: its evaluations split the images between the ranks
    (``openmae.engine.distributed.share_of``), so that each of its loops over ``openmae.data.loader.batches_of``
    runs as many batches on every rank; the main rank alone writes files, after the collectives (they would wait
    for its own work past the process group's timeout), and it ends with ``wait_for_main``. A stop
    asked for during it cuts those loops short (``StopAsked``; under torchrun the ranks agree on it before every
    batch, a collective, and all stop at the same one): it must change what a checkpoint keeps only after those loops
    (the best weights' record, a monitor's state)."""

    name: str
    model: nn.Module
    model_config: dict[str, Any]  # the MAEConfig of the encoder (stored in checkpoints, checked on resume)

    def shard_blocks(self) -> list[nn.Module]: ...
    def param_groups(self, train: TrainConfig) -> list[dict]: ...
    def train_data(self, info: DistInfo) -> tuple[SeededSamples, ResumableSampler]: ...
    def forward(self, model: nn.Module, batch: Batch, device: torch.device) -> StepOutput: ...
    def after_epoch(self, run: Run, epoch: int) -> dict[str, Any]: ...


@dataclass
class Run:
    """Context handed to task hooks: settings, where to write, who we are, how far we are."""

    config: Any
    train: TrainConfig
    run_dir: Path
    info: DistInfo
    metrics: MetricsLog
    step: int = 0
    epoch: int = 0


def launch(make_task: Callable[[DistInfo, Resume | None], Task], config: Any) -> dict[str, Any]:
    """Join torchrun's process group (if any), find the checkpoint to resume from (if any), seed, build the task
    (told what it resumes from, so that it skips its init weights) and train it; always leave the group."""
    from openmae.engine.distributed import cleanup, from_main, init_distributed
    from openmae.engine.logging import setup_console
    from openmae.engine.run_lock import run_lock

    info = init_distributed(config.train.device, config.train.dist_timeout_s, config.train.main_wait_s)
    setup_console(info.is_main)
    try:
        t = config.train
        with run_lock(t.output_dir, info):  # one run at a time in a folder: taken before anything there is read
            resume = find_resume(t.resume, t.output_dir, info.is_main)
            if resume is None:  # a new run, not over another unless asked (rank 0 writes the run's files)
                found = from_main(earlier_run(t.output_dir) if info.is_main else None, info)
                start_fresh(t.output_dir, t.overwrite, found, info.is_main, resume_auto=t.resume == "auto")
            if resume is not None:  # normalise as before the stop (the init file, if any, is not read again)
                inherit_stats(config.data, resume.state, str(resume.path),
                              int((resume.model_config or {}).get("in_chans", 3)))
            # all three generators of the training process: timm's Mixup draws its ratio and its mixup-or-cutmix
            # switch from numpy's, so seeding torch alone left a mixup run different each time (a resumed run
            # restores the three from its checkpoint)
            torch.manual_seed(t.seed)
            random.seed(t.seed)
            np.random.seed(t.seed % 2**32)
            with shared_by_ranks(info.rank, info.world_size):  # every rank builds the task's sources alike
                task = make_task(info, resume)
            return train(task, config, t, info, resume)
    finally:
        cleanup(info)


def note_stop(run_dir: Path, stop: str, step: int, when: str) -> None:
    """Write :data:`openmae.engine.checkpoint.STOPPED` (how the run stopped), which `openmae info` reads: a run cut
    during its last epoch's evaluation has logged every step, and looked finished."""
    (run_dir / STOPPED).write_text(json.dumps({"by": stop, "step": step, "when": when}))


def _stopped_while_prepared(stop: str, run_dir: Path, step: int, resume: Resume | None, info: DistInfo,
                            when: str) -> dict[str, Any]:
    """A stop asked for before the first step (a volume survey, a checkpoint read: minutes; the first step may
    compile for minutes more): nothing was trained since the checkpoint resumed from, if any."""
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        note_stop(run_dir, stop, step, f"before the first step, {when}")
        log.warning("stopped by %s before the first step, %s: nothing new to save. %s", stop, when,
                    f"--resume=auto continues from {resume.path}" if resume is not None else
                    "The same command with --resume=auto starts the run again")
    return {"stopped_by": stop}


def train(task: Task, config: Any, train_cfg: TrainConfig, info: DistInfo, resume: Resume | None = None
          ) -> dict[str, Any]:
    """Run ``task`` to the end (or to ``halt_after_steps``, or to a stop signal), continuing from ``resume`` when
    given; returns the last logged and evaluated metrics (with ``stopped_by``: the signal's name, after one)."""
    with StopSignals(train_cfg.stop_signals) as stops, contextlib.ExitStack() as resources:
        return _train(task, config, train_cfg, info, resume, stops, resources)


def _train(task: Task, config: Any, train_cfg: TrainConfig, info: DistInfo, resume: Resume | None,
           stops: StopSignals, resources: contextlib.ExitStack) -> dict[str, Any]:
    host_memory = keep_freed_host_memory()  # before the first step's allocations
    run_dir = Path(train_cfg.output_dir)
    device = info.device
    amp_dtype = autocast_dtype(train_cfg.precision, device)
    try:  # a stop signal during the build cuts its file surveys short (every rank at the same point)
        with shared_by_ranks(info.rank, info.world_size), cut_by(lambda: stops.received is not None):
            dataset, sampler = task.train_data(info)
    except BuildStopped:
        step = resume.state["step"] if resume is not None else 0
        return _stopped_while_prepared(stops.agreed(info) or "a stop", run_dir, step, resume, info,
                                       "while its training data was built")
    workers = getattr(task, "num_workers", config.data.num_workers)
    loader = make_loader(dataset, sampler, workers, pin_memory=device.type == "cuda")
    accum = train_cfg.accum_steps
    batches = sampler.batches_per_epoch
    if train_cfg.max_steps_per_epoch:
        batches = min(batches, train_cfg.max_steps_per_epoch * accum)
    batches -= batches % accum
    if batches == 0:
        raise ValueError(f"one epoch has {sampler.batches_per_epoch} batches, fewer than train.accum_steps={accum}")
    steps_per_epoch = batches // accum
    total_steps = steps_per_epoch * train_cfg.epochs

    model = task.model.to(device)
    wrapped = parallelize(model, info, train_cfg.distributed, train_cfg.compile, task.shard_blocks(), train_cfg.compile_scope,
                          train_cfg.compile_mode)
    groups = task.param_groups(train_cfg)
    base_lr = effective_lr(train_cfg.blr, train_cfg.lr, train_cfg.batch_size, accum, info.world_size)
    optimizer = build_optimizer(train_cfg.optimizer, groups, base_lr, train_cfg.betas, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    ckpts = CheckpointManager(run_dir, train_cfg.keep_last)

    epoch, start_batch, step, resumed = 0, 0, 0, None
    if resume is not None:
        epoch, start_batch, step = restore(resume, task, model, optimizer, scaler, config, train_cfg.batch_size, info)
        resumed = step

    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_yaml(config))
        log.info("%s: %d steps/epoch x %d epochs, effective batch %d, lr %.3g, precision %s, device %s, world %d",
                 task.name, steps_per_epoch, train_cfg.epochs, train_cfg.batch_size * accum * info.world_size,
                 base_lr, amp_dtype or "fp32", device, info.world_size)
        log.info("host memory: %s", host_memory)
    metrics_log = MetricsLog(run_dir, info.is_main, resumed, train_cfg.tensorboard)
    run = Run(config, train_cfg, run_dir, info, metrics_log, step, epoch)

    def checkpoint(epoch_: int, batch_in_epoch: int, keep: bool = False, rng: dict[str, Any] | None = None) -> None:
        save(ckpts, epoch_, batch_in_epoch, step, task, model, optimizer, scaler, config, info, keep, rng)

    after_step = getattr(task, "after_step", None)
    pending: list[tuple[int, torch.Tensor, dict[str, torch.Tensor]]] = []
    last: dict[str, Any] = {}
    skipped_files, skipped_steps = 0, 0
    window_start, window_images = time.perf_counter(), 0

    def flush(epoch_: int) -> None:
        """Check the buffered losses for NaN/Inf (one host sync per interval, not per step) and log them."""
        nonlocal pending, window_start, window_images, last
        if not pending:
            return
        losses = torch.stack([loss for _, loss, _ in pending]).float()
        finite = torch.isfinite(losses)
        if not bool(finite.all()):
            bad_step = pending[int((~finite).nonzero()[0])][0]
            raise NonFiniteLossError(
                f"loss became {losses[~finite][0].item()} at step {bad_step} (epoch {epoch_}); stopped. The last good "
                f"checkpoint in {run_dir} is untouched. Lower the lr, set train.clip_grad, use bf16 instead of fp16, "
                f"or set train.nonfinite=skip")
        mean_loss = float(all_reduce_mean(losses.mean().to(device), info))
        extra = {k: float(all_reduce_mean(torch.stack([m[k] for _, _, m in pending]).float().mean().to(device), info))
                 for k in pending[-1][2]}
        elapsed = time.perf_counter() - window_start
        last = {"step": pending[-1][0], "epoch": round(epoch_ + (pending[-1][0] - epoch_ * steps_per_epoch)
                                                       / steps_per_epoch, 4),
                "loss": mean_loss, "lr": optimizer.param_groups[0]["lr"] / groups[0].get("lr_scale", 1.0),
                "images_per_s": round(window_images * info.world_size / max(elapsed, 1e-9), 2),
                "skipped_files": skipped_files, "skipped_steps": skipped_steps, **extra}
        metrics_log.write(last)
        if bar.disable and info.is_main:  # no bar (a batch job's log, or train.progress=false): a line instead
            left = (total_steps - last["step"]) * elapsed / len(pending)
            log.info("step %d/%d (epoch %.2f): loss %.4f, lr %.2e, %.0f images/s%s, %s left", last["step"], total_steps,
                     last["epoch"], mean_loss, last["lr"], last["images_per_s"],
                     "".join(f", {k} {v:.4g}" for k, v in extra.items()), datetime.timedelta(seconds=round(left)))
        pending, window_start, window_images = [], time.perf_counter(), 0

    def stopped(stop: str, when: str) -> dict[str, Any]:
        """Log the stop (its checkpoint saved), note it for `openmae info`, and what the run returns."""
        bar.close()
        if info.is_main:
            note_stop(run_dir, stop, step, when)
            # None where only another rank got the signal
            waited = None if stops.received_at is None else time.monotonic() - stops.received_at
            after = "" if waited is None else f", {waited:.1f} s after the signal"
            log.warning("stopped by %s %s; checkpoint saved in %s%s. Run the same command with --resume=auto "
                        "(train.resume=auto) to continue exactly from here", stop, when, run_dir, after)
            if waited is not None and (warning := torchrun_grace_warning(waited)):
                log.warning(warning)
        return {**last, "stopped_by": stop}

    # a stop asked for while the data and the model were prepared (a volume survey, a checkpoint read: minutes), before
    # a first step that may compile for minutes more: nothing was trained since the checkpoint resumed from, if any
    if epoch < train_cfg.epochs and (stop := stops.agreed(info)):
        return _stopped_while_prepared(stop, run_dir, step, resume, info, "while the run was prepared")
    if info.is_main:
        (run_dir / STOPPED).unlink(missing_ok=True)  # going on: no longer stopped
    shown = info.is_main and train_cfg.progress and on_screen()  # a bar's redraws clutter a log file
    bar = tqdm(total=total_steps, initial=step, disable=not shown, unit="step",
               dynamic_ncols=True, desc=task.name)
    optimizer.zero_grad(set_to_none=True)
    # One loader iterator for the rest of the run: its workers go on preparing the next epoch's first batches
    # while an epoch ends (evaluation, checkpoint) instead of starting each epoch from empty queues. The batches
    # are the same either way (each sample's seed depends on its epoch and index only).
    if epoch < train_cfg.epochs:  # a finished run that is resumed starts no workers
        sampler.set_position(epoch, start_batch, train_cfg.epochs, batches)
        loaded = iter(loader)
        resources.callback(end_workers, loaded)  # however the run ends (after the thread below stops)
        if dataset.device_stage is not None and workers > 0 and config.data.device_ahead:  # decode ahead, in a thread
            stream = resources.enter_context(DeviceAhead(loaded, dataset, device))
        else:
            stream = (dataset.to_device(b, device) for b in loaded)
    while epoch < train_cfg.epochs:
        run.epoch = epoch
        model.train()
        for i in range(start_batch, batches):
            batch = next(stream)
            micro = i % accum
            if micro == 0:
                lr = lr_at(epoch + i / batches, base_lr, train_cfg.min_lr, train_cfg.warmup_epochs, train_cfg.epochs)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
            sync = micro == accum - 1
            no_sync = wrapped.no_sync() if (not sync and isinstance(wrapped, nn.parallel.DistributedDataParallel)) \
                else contextlib.nullcontext()
            if train_cfg.compile:
                torch.compiler.cudagraph_mark_step_begin()  # a new step: CUDA graphs may reuse the last step's outputs
            with no_sync:
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    out = task.forward(wrapped, batch, device)
                scaler.scale(out.loss / accum).backward()
            skipped_files += batch.skipped
            window_images += batch.images.shape[0]
            if not sync:
                continue
            if train_cfg.nonfinite == "skip":
                ok = all_reduce_mean(torch.isfinite(out.loss.detach()).float(), info) == 1
                if not bool(ok):
                    log.warning("non-finite loss at step %d: update skipped (train.nonfinite=skip)", step + 1)
                    optimizer.zero_grad(set_to_none=True)
                    skipped_steps += 1
                    step += 1
                    bar.update(1)
                    continue
            if train_cfg.clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            run.step = step
            if after_step is not None:
                after_step(step)
            bar.update(1)
            # copies (on the device, no sync): with CUDA graphs the next replay overwrites the step's outputs
            pending.append((step, out.loss.detach().clone(), {k: v.detach().clone() for k, v in out.metrics.items()}))
            if step % train_cfg.log_every_steps == 0:
                flush(epoch)
                bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}", img_s=f"{last['images_per_s']:.0f}")
            mid_epoch_save = train_cfg.ckpt_every_steps and step % train_cfg.ckpt_every_steps == 0 and i + 1 < batches
            halt = train_cfg.halt_after_steps and step == train_cfg.halt_after_steps
            saved = bool(mid_epoch_save or (halt and i + 1 < batches))
            if saved:
                flush(epoch)
                checkpoint(epoch, i + 1)
                window_start = time.perf_counter()
            if halt and i + 1 < batches:
                bar.close()
                log.info("halted after step %d as asked (train.halt_after_steps)", step)
                return {**last, "halted": True}
            # a stop signal: asked after every step in one process, at log steps when distributed (a collective;
            # every rank asks at the same steps); saved at batch i + 1 even at an epoch's end, so that a resumed
            # run does that epoch's evaluation and saving exactly as an uninterrupted run would have
            stop = stops.agreed(info) if not info.enabled or step % train_cfg.log_every_steps == 0 else None
            if stop:
                flush(epoch)
                if not saved:  # the periodic save of this very step may just have written it
                    checkpoint(epoch, i + 1)
                return stopped(stop, f"after step {step}")
        start_batch = 0
        flush(epoch)
        epoch += 1
        run.epoch = epoch
        before_evaluation = rng_state()  # what a stop during the evaluation saves with (a resumed run evaluates again)
        cut = False
        try:
            # a stop asked for during the evaluation (which may take minutes) cuts it short at its next batch; under
            # torchrun on every rank at the same batch (the ranks agree before each: a collective)
            with stops_between_batches(lambda: stops.agreed(info) is not None):
                evaluated = task.after_epoch(run, epoch)
        except StopAsked:  # on every rank alike
            evaluated, cut = {}, True
        stop = stops.agreed(info)  # once an epoch, on every rank
        if stop and cut:  # saved as at the end of the epoch's last step, before its evaluation
            checkpoint(epoch - 1, batches, rng=before_evaluation)
            return stopped(stop, f"during the evaluation after epoch {epoch} (step {step}), which a resumed run "
                                 "does again")
        if evaluated:
            last = {**last, **evaluated}
            metrics_log.write({"step": step, "epoch": epoch, **evaluated})
        periodic = train_cfg.ckpt_every_epochs and epoch % train_cfg.ckpt_every_epochs == 0
        halt = train_cfg.halt_after_steps and step == train_cfg.halt_after_steps
        saved = bool(periodic or epoch == train_cfg.epochs or halt or train_cfg.ckpt_every_steps)
        if saved:
            checkpoint(epoch, 0, keep=bool(periodic))
        if stop and epoch < train_cfg.epochs:  # (after the last epoch's evaluation the run is done)
            if not saved:
                checkpoint(epoch, 0)
            return stopped(stop, f"after epoch {epoch} (step {step})")
        window_start, window_images = time.perf_counter(), 0  # evaluation and saving are not training time
        if halt:
            bar.close()
            return {**last, "halted": True}
    bar.close()
    last.update(skipped_files=skipped_files, skipped_steps=skipped_steps)
    if info.is_main:
        from openmae.eval.plots import loss_curve

        loss_curve(read_metrics(run_dir / "metrics.jsonl"), run_dir / "loss_curve.png", title=task.name)
    metrics_log.close()
    return last
