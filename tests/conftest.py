"""Shared fixtures: where the real datasets are, and small helpers."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
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
    # every generator a test may draw from without seeding it (timm's augmentations use Python's and numpy's): a
    # test's draws must not depend on the tests before it
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
