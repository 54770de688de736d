"""Pure-torch model code: no data, no training, no file I/O beyond state dicts.

Names load on first use (PEP 562), so ``openmae.models.config`` and the presets, which the CLI and config checks
read, do not import torch and timm."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from openmae.models.config import MAEConfig
    from openmae.models.mae import MAEOutput, MaskedAutoencoder
    from openmae.models.masking import MaskPlan, plan_from_noise
    from openmae.models.registry import create_model, list_models, model_config

_WHERE = {
    "MAEConfig": "openmae.models.config",
    "MAEOutput": "openmae.models.mae",
    "MaskPlan": "openmae.models.masking",
    "MaskedAutoencoder": "openmae.models.mae",
    "create_model": "openmae.models.registry",
    "list_models": "openmae.models.registry",
    "model_config": "openmae.models.registry",
    "plan_from_noise": "openmae.models.masking",
}
__all__ = [
           "MAEConfig",
           "MAEOutput",
           "MaskPlan",
           "MaskedAutoencoder",
           "create_model",
           "list_models",
           "model_config",
           "plan_from_noise",
]


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'openmae.models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
