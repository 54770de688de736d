"""Shared fixtures: where the real datasets are, and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    return Path(os.environ.get("OPENMAE_DATA", REPO.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def datasets() -> Path:
    root = data_root()
    if not (root / "cifar10").is_dir():
        raise FileNotFoundError(
            f"real datasets not found under {root}; set OPENMAE_DATA to the folder holding cifar10/, "
            f"fashion-mnist/ and imagenet-sample/"
        )
    return root


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
