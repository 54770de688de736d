"""Which parameters train when only part of a model does: the last blocks of an encoder (partial fine-tuning,
``finetune.tune_blocks``) or a decoder behind a frozen or partly frozen encoder (``pretrain.tune_blocks``).

A frozen parameter has ``requires_grad`` off: autograd builds no graph through the blocks before the first trained
one (their outputs need no gradient), the optimizer's groups leave it out (:func:`openmae.engine.optim.param_groups`)
and DDP / FSDP2 reduce nothing for it."""

from __future__ import annotations

from torch import nn

from openmae.models.mae import DECODER_PREFIXES, MaskedAutoencoder


def last_block_prefixes(depth: int, blocks: int | None, setting: str) -> tuple[str, ...] | None:
    """The name prefixes ``blocks.i.`` of an encoder's last ``blocks`` of ``depth`` blocks; ``None`` when every block
    trains (``blocks`` None or the depth). Refuses a count outside 0..depth, naming ``setting``."""
    if blocks is not None and not 0 <= blocks <= depth:
        raise ValueError(f"{setting}={blocks}, but the encoder has {depth} blocks: give 0 to {depth} (the last N "
                         "blocks train), or null to train the whole encoder")
    if blocks is None or blocks == depth:
        return None
    return tuple(f"blocks.{i}." for i in range(depth - blocks, depth))


def train_only(model: nn.Module, prefixes: tuple[str, ...]) -> tuple[int, int]:
    """Leave ``requires_grad`` on for the parameters whose names start with one of ``prefixes`` and off for all
    others (a parameter that was already fixed, as MAE's sin-cos position tables, stays fixed). Returns the numbers
    of trained and of all parameters."""
    for name, param in model.named_parameters():
        param.requires_grad = param.requires_grad and name.startswith(prefixes)
    return count_trained(model)


def count_trained(model: nn.Module) -> tuple[int, int]:
    """The numbers of trained and of all parameters."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def tune_encoder_blocks(model: MaskedAutoencoder, blocks: int | None) -> tuple[int, int]:
    """MAE pretraining with part of the encoder frozen: the decoder and the mask token train, with the encoder's
    last ``blocks`` blocks and its final norm; 0: the whole encoder is frozen (patch embedding, cls token, blocks
    and norm) and a decoder learns to reconstruct from its features; ``None`` (or the depth): everything trains.
    Returns the numbers of trained and of all parameters (the fixed position tables among them)."""
    tuned = last_block_prefixes(model.cfg.depth, blocks, "pretrain.tune_blocks")
    if tuned is None:
        return count_trained(model)
    return train_only(model, (*tuned, *(("norm.",) if tuned else ()), *DECODER_PREFIXES))
