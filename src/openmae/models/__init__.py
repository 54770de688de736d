"""Pure-torch model code: no data, no training, no file I/O beyond state dicts."""

from openmae.models.mae import MAEConfig, MAEOutput, MaskedAutoencoder
from openmae.models.masking import MaskPlan, plan_from_noise
from openmae.models.registry import create_model, list_models, model_config

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
