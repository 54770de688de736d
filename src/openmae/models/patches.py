"""Patchify / unpatchify for any channel count, non-square images and any dividing patch size.

Layout matches the official MAE code: a patch is flattened as (p, p, C), row-major over the patch grid.
"""

from __future__ import annotations

import torch

from openmae.models.config import grid_size


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, L, p*p*C) with L = (H/p)*(W/p)."""
    n, c, h, w = imgs.shape
    gh, gw = grid_size((h, w), patch_size)
    p = patch_size
    x = imgs.reshape(n, c, gh, p, gw, p)
    x = torch.einsum("nchpwq->nhwpqc", x)  # (N, gh, gw, p, p, C)
    return x.reshape(n, gh * gw, p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, img_size: tuple[int, int], channels: int) -> torch.Tensor:
    """(N, L, p*p*C) -> (N, C, H, W); the exact inverse of :func:`patchify`."""
    n, length, dim = patches.shape
    gh, gw = grid_size(img_size, patch_size)
    p = patch_size
    if length != gh * gw or dim != p * p * channels:
        raise ValueError(
            f"patches of shape {tuple(patches.shape)} do not fit image {img_size[0]}x{img_size[1]} "
            f"with patch {p} and {channels} channels (expected L={gh * gw}, dim={p * p * channels})"
        )
    x = patches.reshape(n, gh, gw, p, p, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)  # (N, C, gh, p, gw, p)
    return x.reshape(n, channels, gh * p, gw * p)


PATCH_WEIGHT = "patch_embed.proj.weight"
PIXEL_HEADS = ("decoder_pred.weight", "decoder_pred.bias")  # (p*p*C, D), (p*p*C): one output per pixel and band


def adapt_in_chans(sd: dict[str, torch.Tensor], in_chans: int) -> list[str]:
    """Weights trained on images with another number of channels (an RGB checkpoint for 13-band satellite tiles, or
    for grayscale scans), made to fit a model taking ``in_chans``: the patch embedding's input channels through
    timm's ``adapt_input_conv`` (one channel: the RGB filters summed; more: repeated cyclically, scaled by 3 / C),
    and the decoder's pixel head, whose outputs are per band, dropped (left at its initialisation). Changes ``sd``
    in place; returns what it did, for the log (nothing when the channels already match)."""
    from timm.models import adapt_input_conv

    weight = sd.get(PATCH_WEIGHT)
    if weight is None or weight.ndim != 4 or weight.shape[1] == in_chans:
        return []
    done = [f"{PATCH_WEIGHT} adapted from {weight.shape[1]} to {in_chans} input channels (timm's adapt_input_conv)"]
    sd[PATCH_WEIGHT] = adapt_input_conv(in_chans, weight, base_chans=weight.shape[1])
    dropped = [k for k in PIXEL_HEADS if k in sd]
    for key in dropped:
        del sd[key]
    if dropped:
        done.append(f"{', '.join(dropped)} left at initialisation (one output per pixel and channel)")
    return done
