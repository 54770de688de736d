"""Run settings shared by every task: which model, how to train, where to write."""

from __future__ import annotations

import dataclasses
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from openmae.config import ConfigError, require
from openmae.models.config import MAEConfig
from openmae.models.registry import _SHORT, PRESETS, model_config

if TYPE_CHECKING:
    import torch

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile modes


PRECISIONS = ("fp32", "bf16", "fp16")  # train.precision also takes "auto"
# what chooses a classifier's best epoch (model-best.pth): top-1, or a measure of imbalanced classes
# (openmae.eval.confusion, openmae.eval.ranking); each named as the log says it
SELECT_BY = {"top1": "top-1", "balanced_accuracy": "balanced accuracy", "macro_f1": "macro F1", "roc_auc": "ROC-AUC",
             "mean_ap": "mean AP"}
CLASS_WEIGHTS = ("none", "balanced")  # finetune / linprobe.class_weights (openmae.engine.imbalance)
ONE_CLASS_MEASURES = ("top1", "balanced_accuracy")  # measured where each image has one class
MANY_CLASS_MEASURES = ("mean_ap",)  # measured where images may have several (data.multi_label)


def measure_to_select(select_by: str, multi_label: bool) -> str:
    """The measure ``select_by`` names; ``auto``: top-1, or mean average precision for images of several classes."""
    if select_by == "auto":
        return "mean_ap" if multi_label else "top1"
    return select_by


def precision_dtype(name: str) -> torch.dtype | None:
    """The autocast dtype of a precision name in :data:`PRECISIONS` (None: plain fp32)."""
    import torch  # here, not at the top: the settings load without torch, so the CLI checks them in a blink

    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def is_signal_name(name: str) -> bool:
    return name.startswith("SIG") and isinstance(getattr(signal, name, None), signal.Signals)


@dataclass
class ModelSection:
    """A registry preset plus optional overrides of its fields (None keeps the preset's value).

    ``name=auto`` (evaluation commands) takes the architecture from the checkpoint being evaluated."""

    name: str = "mae_vit_base_patch16"
    img_size: tuple[int, int] | None = None
    patch_size: int | None = None
    in_chans: int | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    decoder_embed_dim: int | None = None
    decoder_depth: int | None = None
    decoder_num_heads: int | None = None
    mlp_ratio: float | None = None
    norm_pix_loss: bool | None = None
    masking: str | None = None
    grad_checkpointing: bool | None = None
    # read the weights a file averages (an EMA) instead of its trained ones: timm train.py's state_dict_ema, an
    # openmae fine-tuning run checkpoint's (finetune.model_ema=true; its model-best.pth holds them already)
    ema: bool = False

    def overrides(self) -> dict[str, Any]:
        """The architecture fields set (``name`` and ``ema`` say which weights, not their shape)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("name", "ema") and getattr(self, f.name) is not None}

    def resolve(self) -> MAEConfig:
        return model_config(self.name, **self.overrides())

    def check(self) -> None:
        require(self.name in PRESETS or bool(_SHORT.match(self.name)) or self.name == "auto", "model.name", self.name,
                f"a preset ({', '.join(sorted(PRESETS))}), a short form like B/16, or auto (from the init checkpoint)")
        if self.name == "auto":
            return
        try:
            self.resolve()
        except ValueError as err:
            raise ConfigError(f"model: {err}") from None


@dataclass
class TrainConfig:
    """The optimisation loop. lr = blr x effective batch / 256 unless ``lr`` is set."""

    epochs: int = 800
    warmup_epochs: float = 40
    batch_size: int = 64
    accum_steps: int = 1
    blr: float = 1.5e-4
    lr: float | None = None
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    optimizer: str = "adamw"
    clip_grad: float | None = None
    precision: str = "auto"
    compile: bool = False
    compile_scope: str = "model"  # model: one graph for the whole forward; blocks: each block (fast to compile)
    # torch.compile's mode: reduce-overhead replays the step's kernels as CUDA graphs (the step's shapes are static)
    compile_mode: str = "default"
    distributed: str = "ddp"
    seed: int = 0  # seeds torch, numpy and Python in the training process, and (with epoch and index) every sample's augmentation
    output_dir: str = "runs/run"
    resume: str = ""
    # a new run in an output_dir that holds another (checkpoints, model files, metrics): refused unless true, when
    # those files are removed first (a later resume=auto must not find the old run's checkpoints)
    overwrite: bool = False
    ckpt_every_epochs: int = 20
    ckpt_every_steps: int = 0
    keep_last: int = 2
    log_every_steps: int = 20
    max_steps_per_epoch: int = 0
    halt_after_steps: int = 0
    nonfinite: str = "stop"
    # on these signals (a cluster's preemption or time-limit warning, Ctrl-C): save a checkpoint and exit with 128 +
    # the signal's number (a second Ctrl-C stops at once); [] leaves them to end the process at once
    stop_signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1", "SIGINT")
    device: str = "auto"
    # seconds a collective of torchrun's process group may wait for a rank (0: torch's default, 10 minutes with NCCL,
    # 30 with gloo); the main rank's own work (writing checkpoints, the best weights, pictures) is waited for without
    # one in flight, for up to main_wait_s: past that the other ranks stop with an error (a main rank hung on a stuck
    # file system held the job until the scheduler's limit), which torchrun's --max-restarts resumes from
    dist_timeout_s: float = 0.0
    main_wait_s: float = 3600.0
    tensorboard: bool = True
    # a progress bar on a terminal or in a notebook; in a log file (a batch job's) or with false, a log line at every
    # train.log_every_steps instead (step, loss, lr, images/s, time left)
    progress: bool = True

    def check(self) -> None:
        require(self.epochs >= 1, "train.epochs", self.epochs, ">= 1")
        require(0 <= self.warmup_epochs <= self.epochs, "train.warmup_epochs", self.warmup_epochs,
                f"between 0 and train.epochs ({self.epochs}); a shorter run than the recipe's needs a shorter warm-up "
                f"too, such as train.warmup_epochs={self.epochs // 20} (the paper's: a twentieth of the epochs)")
        require(self.dist_timeout_s >= 0, "train.dist_timeout_s", self.dist_timeout_s,
                ">= 0 seconds (0: torch's default)")
        require(self.main_wait_s > 0, "train.main_wait_s", self.main_wait_s,
                "> 0 seconds (how long the other ranks wait for the main rank's writes)")
        require(self.batch_size >= 1, "train.batch_size", self.batch_size, ">= 1 (images per process and step)")
        require(self.accum_steps >= 1, "train.accum_steps", self.accum_steps, ">= 1")
        require(self.blr > 0, "train.blr", self.blr, "> 0")
        require(self.lr is None or self.lr > 0, "train.lr", self.lr, "> 0 or unset")
        require(self.min_lr >= 0, "train.min_lr", self.min_lr, ">= 0")
        require(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, ">= 0")
        require(all(0 <= b < 1 for b in self.betas), "train.betas", self.betas, "two numbers in [0, 1)")
        require(self.optimizer in ("adamw", "lars", "sgd"), "train.optimizer", self.optimizer, "adamw, lars or sgd")
        require(self.clip_grad is None or self.clip_grad > 0, "train.clip_grad", self.clip_grad, "> 0 or unset")
        require(self.compile_scope in ("model", "blocks"), "train.compile_scope", self.compile_scope, "model or blocks")
        require(self.compile_mode in COMPILE_MODES, "train.compile_mode", self.compile_mode, " or ".join(COMPILE_MODES))
        require(self.precision in ("auto", *PRECISIONS), "train.precision", self.precision,
                "auto, fp32, bf16 or fp16 (fp16 on CUDA only)")
        require(self.distributed in ("ddp", "fsdp"), "train.distributed", self.distributed, "ddp or fsdp")
        require(self.ckpt_every_epochs >= 0, "train.ckpt_every_epochs", self.ckpt_every_epochs, ">= 0")
        require(self.ckpt_every_steps >= 0, "train.ckpt_every_steps", self.ckpt_every_steps, ">= 0")
        require(self.keep_last >= 1, "train.keep_last", self.keep_last, ">= 1")
        require(self.log_every_steps >= 1, "train.log_every_steps", self.log_every_steps, ">= 1")
        require(self.max_steps_per_epoch >= 0, "train.max_steps_per_epoch", self.max_steps_per_epoch, ">= 0")
        require(self.halt_after_steps >= 0, "train.halt_after_steps", self.halt_after_steps, ">= 0")
        require(self.nonfinite in ("stop", "skip"), "train.nonfinite", self.nonfinite, "stop or skip")
        for name in self.stop_signals:
            require(is_signal_name(name), "train.stop_signals", list(self.stop_signals),
                    "signal names of this platform, e.g. [SIGTERM, SIGUSR1]")
        require(self.resume in ("", "auto") or not self.resume.startswith("-"), "train.resume", self.resume,
                "'', 'auto' or a checkpoint path")


def train_field(**kw: Any) -> Any:
    """A ``train`` section default with task-specific values (e.g. fine-tuning's blr)."""
    return field(default_factory=lambda: TrainConfig(**kw))
