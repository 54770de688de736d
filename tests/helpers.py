"""Small builders shared by the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from openmae.config import load_config
from openmae.convert.files import load_file
from openmae.engine.pretrain import PretrainConfig

REPO = Path(__file__).resolve().parents[1]


def tiny_pretrain(out: Path, data_root: Path, *extra: str) -> PretrainConfig:
    """Debug-sized MAE on 64 real CIFAR-10 images, 4 steps of 16 an epoch, logging every step."""
    return load_config(PretrainConfig, overrides=[
        "model.name=mae_vit_debug_patch4_32", "data.name=cifar10", f"data.root={data_root}", "data.max_samples=64",
        "data.num_workers=0", "train.epochs=3", "train.warmup_epochs=1", "train.batch_size=16",
        "train.log_every_steps=1", "train.progress=false", "train.tensorboard=false", "pretrain.vis_images=0",
        f"train.output_dir={out}", "train.blr=1.5e-3", *extra,
    ])


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model-last.pth")["model"]


def run_cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "openmae", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=REPO)
