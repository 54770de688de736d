"""openmae: Masked Autoencoders (He et al., 2021) for pretraining, evaluating and converting ViT encoders."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from openmae.convert.checkpoints import load_pretrained
    from openmae.models import MAEConfig, MAEOutput, MaskedAutoencoder, create_model, list_models, model_config

__version__ = "0.1.0"
# name -> the module that defines it, imported on first use (PEP 562): the models need timm, whose import pulls in
# torchvision's model zoo and torch._dynamo (2-3 s on a 2-core CPU), which `import openmae.config`, the data and
# host-memory modules, and a subprocess that needs only one of them should not pay
_WHERE = {
    "MAEConfig": "openmae.models",
    "MAEOutput": "openmae.models",
    "MaskedAutoencoder": "openmae.models",
    "create_model": "openmae.models",
    "list_models": "openmae.models",
    "model_config": "openmae.models",
    "load_pretrained": "openmae.convert.checkpoints",
}
__all__ = [
    "MAEConfig",
    "MAEOutput",
    "MaskedAutoencoder",
    "__version__",
    "create_model",
    "list_models",
    "load_pretrained",
    "model_config",
]


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'openmae' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
