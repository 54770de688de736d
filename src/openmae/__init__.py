"""openmae: Masked Autoencoders (He et al., 2021) for pretraining, evaluating and converting ViT encoders."""

from openmae.models import MAEConfig, MAEOutput, MaskedAutoencoder, create_model, list_models, model_config

__version__ = "0.1.0"
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
    # load_pretrained lives in convert/ (file I/O); imported lazily to keep `import openmae` light
    if name == "load_pretrained":
        from openmae.convert.checkpoints import load_pretrained

        return load_pretrained
    raise AttributeError(name)
