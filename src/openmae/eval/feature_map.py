"""What an encoder's patch features tell apart: the first three principal components of its patch tokens as red,
green and blue, each patch its colour.

The components are fitted once over the patches of all the images shown (up to ``FIT_IMAGES`` of them, spread
evenly), so that one colour means the same direction in feature space in every picture: patches of the same kind of
thing (an object's parts, its background, a tissue) come out alike within and across images. Each patch's token is
first taken from the mean token of its place over those images: a ViT's tokens carry their place strongly (an MAE's
fixed position table is added to every patch), and without this the first components draw the position table, the
same picture for every image. (With a single image there is no such mean: its tokens are centred as a whole.) Each
component runs from its 1st to its 99th percentile over the fitted patches. An encoder without a final norm of every
token (a classifier fine-tuned with average pooling) has its last block's tokens standardised each (a layer norm
without its scale and shift) before the fit. No decoder is needed: any encoder file draws."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from openmae.eval.plots import principal_axes

FIT_IMAGES = 64  # images whose patches the components are fitted on (the colours of all the others follow them)
COMPONENTS = 3  # red, green, blue


def evenly(count: int, most: int = FIT_IMAGES) -> list[int]:
    """At most ``most`` of ``count`` items' indices, spread evenly (all of them when there are no more)."""
    return list(range(count)) if count <= most else [k * count // most for k in range(most)]


@dataclass
class Components:
    """The principal components ``axes`` (3, D) of patch tokens taken from their place's mean token ``mean``
    (h, w, D; or (D,), one mean for every place), each mapped to [0, 1] from ``low`` to ``high`` (3,), its 1st and
    99th percentiles over the fitted patches; ``explained``: the share of the variance each explains."""

    mean: torch.Tensor
    axes: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    explained: tuple[float, ...]

    def colours(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens (N, h, w, D) -> their colours (N, 3, h, w) in [0, 1]."""
        projected = (tokens.float().cpu() - self.mean) @ self.axes.T  # (N, h, w, 3)
        unit = (projected - self.low) / (self.high - self.low).clamp_min(1e-12)
        return unit.clamp(0, 1).permute(0, 3, 1, 2)


def fit_components(tokens: torch.Tensor) -> Components:
    """The :class:`Components` of patch tokens (N, h, w, D), about each place's mean over the N images (N >= 2) or
    their mean (N = 1); fewer than three (a width under 3, a single patch) are padded with components of zeros."""
    tokens = tokens.float().cpu()
    mean = tokens.mean(0) if tokens.shape[0] > 1 else tokens.reshape(-1, tokens.shape[-1]).mean(0)  # (h, w, D) / (D,)
    flat = (tokens - mean).reshape(-1, tokens.shape[-1])  # (M, D), centred
    _, directions, share = principal_axes(flat.numpy())
    axes = torch.zeros(COMPONENTS, flat.shape[1], dtype=torch.float64)
    kept = min(COMPONENTS, len(directions))
    axes[:kept] = torch.from_numpy(directions[:kept])
    projected = flat.double() @ axes.T  # (M, 3)
    low, high = projected.quantile(0.01, dim=0), projected.quantile(0.99, dim=0)
    return Components(mean, axes.float(), low.float(), high.float(), tuple(float(v) for v in share[:kept]))


@torch.no_grad()
def patch_tokens(encoder: nn.Module, imgs: torch.Tensor) -> torch.Tensor:
    """The last block's patch tokens (N, h, w, D) of ``encoder`` (an openmae ``MaskedAutoencoder`` or a timm
    ``VisionTransformer``) for normalised ``imgs`` (N, C, H, W), the whole image seen (no mask), after the final norm,
    or standardised each where there is none (a classifier fine-tuned with average pooling), on the CPU."""
    encoder.eval()
    imgs = imgs.to(next(encoder.parameters()).device)
    grid = tuple(encoder.patch_embed.grid_size)  # (h, w): timm's PatchEmbed in both
    tokens = encoder.forward_features(imgs)[:, -grid[0] * grid[1]:].float()  # (N, L, D): the prefix tokens left out
    if isinstance(getattr(encoder, "fc_norm", None), nn.LayerNorm):  # its tokens have no final norm
        tokens = F.layer_norm(tokens, tokens.shape[-1:])
    return tokens.reshape(imgs.shape[0], *grid, -1).cpu()


@dataclass
class FeatureMap:
    """Panels (N, C, H, W) in [0, 1]: the original and its patches coloured by their features' first three principal
    components (N, 3, H, W; each patch one colour)."""

    original: torch.Tensor
    features: torch.Tensor
    coloured: ClassVar[tuple[int, ...]] = (1,)

    def panels(self) -> list[torch.Tensor]:
        return [self.original, self.features]


def feature_map(encoder: nn.Module, imgs: torch.Tensor, components: Components, original: torch.Tensor) -> FeatureMap:
    """The :class:`FeatureMap` of normalised ``imgs``; ``original``: their panel (:func:`openmae.eval.reconstruction.
    displayed`)."""
    colours = components.colours(patch_tokens(encoder, imgs))  # (N, 3, h, w)
    size = imgs.shape[-2:]
    return FeatureMap(original, F.interpolate(colours, size=size, mode="nearest"))  # each patch's pixels its colour
