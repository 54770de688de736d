"""Named presets: the paper's MAE models, tiny/small encoders and small-image variants.

Sizes come from one table (big_vision style): "B/16" decodes to width 768, depth 12, 12 heads, patch 16.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from openmae.models.config import MAEConfig

if TYPE_CHECKING:
    from openmae.models.mae import MaskedAutoencoder

# name -> (width, depth, heads): ViT encoder sizes (Dosovitskiy et al.; tiny/small from DeiT)
VIT_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}
SIZE_LETTERS = {"Ti": "tiny", "S": "small", "B": "base", "L": "large", "H": "huge"}

PAPER_DECODER = {"decoder_embed_dim": 512, "decoder_depth": 8, "decoder_num_heads": 16}
# A light decoder for small images on small machines (4 blocks x 128, as small-scale MAE reproductions use).
SMALL_DECODER = {"decoder_embed_dim": 128, "decoder_depth": 4, "decoder_num_heads": 4}


def _encoder(size: str, patch: int) -> dict[str, Any]:
    width, depth, heads = VIT_SIZES[size]
    return {"embed_dim": width, "depth": depth, "num_heads": heads, "patch_size": patch}


PRESETS: dict[str, dict[str, Any]] = {
    # the paper's ImageNet models (224px, decoder 8 x 512)
    "mae_vit_base_patch16": {**_encoder("base", 16), **PAPER_DECODER, "img_size": 224},
    "mae_vit_large_patch16": {**_encoder("large", 16), **PAPER_DECODER, "img_size": 224},
    "mae_vit_huge_patch14": {**_encoder("huge", 14), **PAPER_DECODER, "img_size": 224},
    "mae_vit_tiny_patch16": {**_encoder("tiny", 16), **PAPER_DECODER, "img_size": 224},
    "mae_vit_small_patch16": {**_encoder("small", 16), **PAPER_DECODER, "img_size": 224},
    # small images: CIFAR-like 32px RGB, MNIST-like 28px grayscale
    "mae_vit_tiny_patch4_32": {**_encoder("tiny", 4), **SMALL_DECODER, "img_size": 32},
    "mae_vit_tiny_patch2_32": {**_encoder("tiny", 2), **SMALL_DECODER, "img_size": 32},
    "mae_vit_small_patch4_32": {**_encoder("small", 4), **SMALL_DECODER, "img_size": 32},
    "mae_vit_tiny_patch4_28_gray": {**_encoder("tiny", 4), **SMALL_DECODER, "img_size": 28, "in_chans": 1},
    "mae_vit_tiny_patch7_28_gray": {**_encoder("tiny", 7), **SMALL_DECODER, "img_size": 28, "in_chans": 1},
    # a debug-sized model for smoke runs and tests
    "mae_vit_debug_patch4_32": {"embed_dim": 64, "depth": 2, "num_heads": 2, "patch_size": 4,
                                "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2,
                                "img_size": 32},
}

_SHORT = re.compile(r"^(Ti|S|B|L|H)/(\d+)$")


def list_models() -> list[str]:
    """Names accepted by :func:`create_model` (short forms like "B/16" are accepted too)."""
    return sorted(PRESETS)


def model_config(name: str, **overrides: Any) -> MAEConfig:
    """The :class:`MAEConfig` of a preset, with keyword overrides (e.g. ``img_size=(64, 96), in_chans=1``)."""
    short = _SHORT.match(name)
    if short:
        params: dict[str, Any] = {**_encoder(SIZE_LETTERS[short.group(1)], int(short.group(2))), **PAPER_DECODER,
                                  "img_size": 224}
    elif name in PRESETS:
        params = dict(PRESETS[name])
    else:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())} or a short form like 'B/16'")
    unknown = set(overrides) - set(MAEConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown model option(s) {sorted(unknown)}; valid: {sorted(MAEConfig.__dataclass_fields__)}")
    params.update(overrides)
    return MAEConfig(**params)


def create_model(name: str, **overrides: Any) -> MaskedAutoencoder:
    """Build a freshly initialised MAE by preset name, e.g. ``create_model("mae_vit_base_patch16")``."""
    # imported here: the presets serve config checks and the CLI, which should not wait for torch and timm
    from openmae.models.mae import MaskedAutoencoder

    return MaskedAutoencoder(model_config(name, **overrides))
