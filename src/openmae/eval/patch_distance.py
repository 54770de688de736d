"""How unlike reference images (parts without defects, healthy scans: images like the training ones) each patch of
an image is: the Euclidean distance of its token (:func:`openmae.eval.feature_map.patch_tokens`) from the nearest
patch token of the reference images, at any place, as nearest-neighbour anomaly detectors score patches (SPADE,
PatchCore). An image's score is its farthest patch. Distances are in units of the reference's own: the 99th
percentile of its patches' distances from the nearest patch of another reference image, so that 1 is as far as
the reference's own most unusual patches and the heat maps of different models compare. In several views of the
patch grid (:mod:`openmae.eval.grid_views`), the reference holds a bank a view and the maps are finer than a patch.

On Fashion-MNIST test images with a square of a CIFAR-10 photo pasted in, an MAE's tokens found the pasted-into
images at ROC-AUC 0.81-0.87 where its reconstruction error found them at 0.61-0.68 (docs/results.md)."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from openmae.data.config import CSV_SUFFIXES, DataConfig
from openmae.data.datasets import ImageSource
from openmae.eval.device_room import device_with_room
from openmae.eval.error_map import heat_colours
from openmae.eval.feature_map import patch_tokens
from openmae.eval.grid_views import averaged, cell_size, put_back, shifted, view_shifts, views_side
from openmae.eval.progress import reported

log = logging.getLogger(__name__)

REFERENCE_IMAGES = 1000  # at most, spread evenly over a reference folder (ReferenceImages.max_images)
SCALE_PATCHES = 2000  # reference patches whose nearest distances set the unit
BLOCK = 2**25  # entries of a distance matrix at a time (128 MiB): its rows are query patches, its columns the bank's
CORESET_DIMS = 128  # a coreset is chosen on the tokens randomly projected to this many dimensions (PatchCore's)
LOG_EVERY_S = 60.0  # a long coreset's choosing says how far it came
HALF_NORM = 100.0  # the coreset's longest token, centred: dot products up to 10^4, float16's largest 65,504


@dataclass
class ReferenceImages:
    """Where the reference images are (a folder or a CSV list; or a file of their tokens kept before,
    :mod:`openmae.eval.reference_file`), how many of them to read at most (spread evenly), the share of their patch
    tokens searched (a greedy coreset, :func:`coreset`; 1: all), a file to keep the tokens in ("": none), and the
    views of the patch grid each image is read in (:mod:`openmae.eval.grid_views`; 1: the grid as it is)."""

    path: str
    max_images: int = REFERENCE_IMAGES
    coreset: float = 1.0
    save: str = ""
    views: int = 1

    def __post_init__(self) -> None:
        if self.max_images < 2:
            raise ValueError(f"reference images at most: {self.max_images}; give 2 or more (each patch is compared "
                             "with the other images')")
        if not 0 < self.coreset <= 1:
            raise ValueError(f"coreset {self.coreset}: give the share of the reference's patch tokens to keep, "
                             "above 0 and at most 1 (1: all; 0.1: a tenth, the search 10x faster)")
        views_side(self.views)  # a square number (against the patch's sides when read)


@dataclass
class PatchBank:
    """The reference images' patch tokens (M, D), which image each came from (M,), the unit of distance, and how
    many images the reference held (0: not known)."""

    tokens: torch.Tensor
    image: torch.Tensor
    scale: float
    images: int = 0

    def to(self, device: torch.device) -> PatchBank:
        return replace(self, tokens=self.tokens.to(device), image=self.image.to(device))


@dataclass
class PatchReference:
    """What each image's patches are measured against: a :class:`PatchBank` for each view of the patch grid
    (:func:`openmae.eval.grid_views.view_shifts`' order; one: the grid as it is) of an encoder of ``patch`` pixels."""

    banks: list[PatchBank]
    patch: tuple[int, int]

    @property
    def views(self) -> int:
        return len(self.banks)

    @property
    def token_count(self) -> int:
        """The tokens of all the views' banks."""
        return sum(len(bank.tokens) for bank in self.banks)

    def to(self, device: torch.device) -> PatchReference:
        return replace(self, banks=[bank.to(device) for bank in self.banks])


def patch_of(encoder: nn.Module) -> tuple[int, int]:
    """The (height, width) in pixels of ``encoder``'s patches (timm's PatchEmbed, an openmae MAE's too)."""
    size = encoder.patch_embed.patch_size
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def search_device(count: int, dim: int, encoder: nn.Module) -> torch.device:
    """Where a bank of ``count`` tokens of width ``dim`` is searched (and its coreset chosen): the encoder's device
    where they fit its free memory (on this project's 2-core CPU, 100 ViT-B/16 images against 1,000 reference
    images' 196,000 tokens took 114 s: docs/benchmarks.md), else the CPU."""
    need = count * dim * 4 + count * CORESET_DIMS * 6 + 2 * BLOCK * 4  # tokens, a coreset's projections, two blocks
    return device_with_room(need, next(encoder.parameters()).device, "the search of the reference's patch tokens",
                            f"its {count} tokens of width {dim}", log)


def nearest(queries: torch.Tensor, bank: PatchBank, query_image: torch.Tensor | None = None) -> torch.Tensor:
    """Each query token's (Q, D) distance from its nearest bank token (Q,), a block of rows at a time (``BLOCK``
    entries: the whole matrix of 1,000 images' 196 patches against as many would take 150 GB); ``query_image``: the
    bank image each query came from, whose own tokens are left out."""
    out, step = [], max(1, BLOCK // max(1, len(bank.tokens)))
    for start in range(0, len(queries), step):
        rows = queries[start : start + step].to(bank.tokens.device).float()
        d = torch.cdist(rows, bank.tokens)  # (rows, M), through a matrix product: fast, off by ~1e-3 near 0
        if query_image is not None:
            d.masked_fill_(query_image[start : start + step, None].to(d.device) == bank.image[None], float("inf"))
        out.append((rows - bank.tokens[d.argmin(1)]).norm(dim=1))  # the nearest's distance again, exactly
    return torch.cat(out) if out else torch.empty(0)


def bank_of(tokens: torch.Tensor) -> PatchBank:
    """The :class:`PatchBank` of images' patch tokens (R, h, w, D), each token numbered by its image, in unit 1."""
    image = torch.arange(len(tokens), device=tokens.device).repeat_interleave(tokens.shape[1] * tokens.shape[2])
    return PatchBank(tokens.flatten(0, 2), image, 1.0, len(tokens))  # image: (R * h * w,)


def coreset(tokens: torch.Tensor, count: int, seed: int = 0, dims: int = CORESET_DIMS) -> torch.Tensor:
    """The indices (count,) of ``count`` of ``tokens`` (M, D) chosen greedily so that every token lies near one of
    them (k-center: each next one the token farthest from those chosen so far; the first drawn with ``seed``), on
    the tokens randomly projected to ``dims`` dimensions where they have more (PatchCore's coreset). By hand: no
    library of ours has it (scikit-learn and faiss neither), and it is a loop over one matrix-vector product."""
    generator = torch.Generator().manual_seed(seed)
    x = tokens.float()
    if x.shape[1] > dims:  # distances kept within a few percent (Johnson-Lindenstrauss), the loop D/dims x faster
        x = x @ (torch.randn(x.shape[1], dims, generator=generator) / dims**0.5).to(x.device)  # (M, dims)
    x = x - x.mean(0)
    x = x * (HALF_NORM / x.norm(dim=1).amax().clamp_min(1e-12))  # every dot product within float16's range
    squared = x.pow(2).sum(1)  # (M,)
    # float16: each pick reads the whole matrix, at half float32's bytes (4.3x faster on a 2-core CPU, 64,000
    # tokens; the same covering radius, 98% the same tokens)
    half = x.half()
    chosen = torch.empty(count, dtype=torch.long, device=x.device)
    chosen[0] = int(torch.randint(len(x), (1,), generator=generator))
    gap = torch.full_like(squared, float("inf"))  # (M,) each token's squared distance from the nearest chosen
    start = last = time.monotonic()
    for k in range(1, count):
        centre = half[chosen[k - 1]]  # (dims,): no host synchronisation on a GPU
        gap = torch.minimum(gap, squared - 2 * (half @ centre).float() + centre.float().pow(2).sum())
        chosen[k] = gap.argmax()
        if k % 1024 == 0 and time.monotonic() - last >= LOG_EVERY_S:
            last = time.monotonic()
            log.info("coreset: %d of %d patch tokens chosen, %.0f s", k, count, last - start)
    return chosen


def build_reference(encoder: nn.Module, batches: Iterable[torch.Tensor], views: int = 1, seed: int = 0,
                    gather: Callable[[torch.Tensor], torch.Tensor] | None = None, keep: float = 1.0
                    ) -> PatchReference:
    """The :class:`PatchReference` of normalised reference images (batches (n, C, H, W)) in ``views`` views of the
    patch grid (:mod:`openmae.eval.grid_views`): for each view, the :class:`PatchBank` of the images read at that
    view's shift, its unit from ``SCALE_PATCHES`` of their patches (drawn with ``seed``), each against the other
    images' patches in the bank. Needs two images or more. ``gather``: every process's tokens (R, h, w, D), in the
    reference's order, from this one's, where the processes of a torchrun job each read a part of the reference;
    every process then holds the same banks. ``keep`` < 1: each bank a :func:`coreset` of that share of the tokens."""
    patch = patch_of(encoder)
    shifts = view_shifts(views, patch)
    tokens: list[list[torch.Tensor]] = [[] for _ in shifts]
    for imgs in batches:  # each batch read once, seen in every view
        for mine, shift in zip(tokens, shifts, strict=True):
            mine.append(patch_tokens(encoder, shifted(imgs, shift)))  # (n, h, w, D), on the CPU
    banks = []
    for mine in tokens:
        every = torch.cat(mine)  # (r, h, w, D): this process's images
        every = gather(every) if gather is not None else every  # (R, h, w, D)
        banks.append(bank_from(every.to(search_device(every[..., 0].numel() * views, every.shape[-1], encoder)),
                               seed, keep))
    return PatchReference(banks, patch)


def bank_from(tokens: torch.Tensor, seed: int = 0, keep: float = 1.0) -> PatchBank:
    """A view's bank (:func:`build_reference`) of the reference images' patch tokens (R, h, w, D)."""
    if len(tokens) < 2:
        raise ValueError("the reference holds fewer than two images: give a folder of images like the training ones "
                         "(each patch is compared with the other images')")
    whole = bank_of(tokens)
    bank = whole
    if keep < 1:
        count = max(1, round(keep * len(whole.tokens)))
        began = time.monotonic()
        kept = coreset(whole.tokens, count, seed)
        bank = PatchBank(whole.tokens[kept], whole.image[kept], 1.0, whole.images)
        log.info("searching a coreset of %d of the reference's %d patch tokens (chosen in %.1f s)", count,
                 len(whole.tokens), time.monotonic() - began)
    chosen = torch.randperm(len(whole.tokens), generator=torch.Generator().manual_seed(seed))[:SCALE_PATCHES]
    chosen = chosen.to(whole.tokens.device)
    own = nearest(whole.tokens[chosen], bank, whole.image[chosen])  # the unit: what the search of the bank finds
    bank.scale = float(own.quantile(0.99).clamp_min(1e-12))
    return bank


@dataclass
class DistanceMap:
    """Panels (N, C, H, W) in [0, 1]: the original and the heat map of each patch's distance from the reference;
    ``distances`` (N, h, w) in the reference's unit (a finer grid in several views of the patch grid), ``score``
    (N,) each image's farthest patch (its highest cell)."""

    original: torch.Tensor
    heat: torch.Tensor
    distances: torch.Tensor
    coloured: ClassVar[tuple[int, ...]] = (1,)

    @property
    def score(self) -> torch.Tensor:
        return farthest(self.distances)

    def panels(self) -> list[torch.Tensor]:
        return [self.original, self.heat]


def patch_distances(encoder: nn.Module, imgs: torch.Tensor, bank: PatchBank) -> torch.Tensor:
    """Each patch's (N, h, w) distance from ``bank``, in its unit, for normalised ``imgs`` (N, C, H, W), on the
    CPU (searched on the bank's device)."""
    tokens = patch_tokens(encoder, imgs)  # (N, h, w, D)
    return (nearest(tokens.flatten(0, 2), bank).reshape(tokens.shape[:3]) / bank.scale).cpu()


def reference_distances(encoder: nn.Module, imgs: torch.Tensor, reference: PatchReference) -> torch.Tensor:
    """Each patch's distance from ``reference``, in its unit, for normalised ``imgs`` (N, C, H, W): (N, h, w) on the
    CPU; in several views, the views' distances put back where each saw them and averaged on the finer grid of
    :func:`openmae.eval.grid_views.cell_size` (N, H / ch, W / cw)."""
    if reference.views == 1:
        return patch_distances(encoder, imgs, reference.banks[0])
    cell = cell_size(reference.views, reference.patch)
    return averaged([put_back(patch_distances(encoder, shifted(imgs, shift), bank), shift, reference.patch, cell)
                     for bank, shift in zip(reference.banks, view_shifts(reference.views, reference.patch), strict=True)
                     ])  # (N, H / ch, W / cw)


def farthest(distances: torch.Tensor) -> torch.Tensor:
    """Each image's score (N,): its farthest patch of ``distances`` (N, h, w)."""
    return distances.flatten(1).amax(1)


class Split(Protocol):
    """How the processes of a torchrun job share the reading of a reference: ``part`` is this process's part of the
    images, ``gather`` every process's tokens from this one's (given the number of images), ``processes`` how many
    share it, ``main`` whether this process writes the files."""

    @property
    def processes(self) -> int: ...

    @property
    def main(self) -> bool: ...  # the process that writes files

    def part(self, source: ImageSource) -> ImageSource: ...

    def gather(self, local: torch.Tensor, count: int) -> torch.Tensor: ...


def read_reference(encoder: nn.Module, reference: ReferenceImages, data: DataConfig, img_size: tuple[int, int],
                   channels: int, mean: tuple[float, ...], std: tuple[float, ...], split: Split | None = None
                   ) -> PatchReference:
    """The :class:`PatchReference` of the ``reference`` images (at most its ``max_images``, spread evenly; in its
    ``views``), read as ``data``'s images are (its format, crop, normalisation); ``split``: each process of a
    torchrun job reads its part (the encoder's passes, minutes for a large model, shared)."""
    from openmae.data.build import eval_batches, source_for

    where = reference.path
    kind = "csv" if Path(where).suffix.lower() in CSV_SUFFIXES else "folder"
    ref = replace(data, name=kind, path=where, holdout=0.0, mean=list(mean), std=list(std))
    source = source_for(ref, ref.train_split, channels, reference.max_images)
    part = split.part(source) if split is not None else source
    shared = f", {len(part)} on each of {split.processes} processes" if split is not None else ""
    views = f" in {reference.views} views of the patch grid" if reference.views > 1 else ""
    log.info("reading the patch tokens of %d reference images (%s%s)%s", len(source), where, shared, views)
    batches = eval_batches(ref, ref.train_split, img_size, channels, 64, source=part)
    gather = functools.partial(split.gather, count=len(source)) if split is not None else None
    with contextlib.closing(reported(batches, "reference images", len(part))) as shown:  # minutes for a large model
        out = build_reference(encoder, (batch.images for batch in shown), reference.views, gather=gather,
                              keep=reference.coreset)
    log.info("distances from the nearest of the %d reference images' %d patch tokens (%s)%s", len(source),
             out.token_count, where, f", each view's against its own {len(out.banks[0].tokens)}" if views else "")
    return out


def distance_map(encoder: nn.Module, imgs: torch.Tensor, reference: PatchReference, original: torch.Tensor,
                 vmax: float = 2.0) -> DistanceMap:
    """The :class:`DistanceMap` of normalised ``imgs``; the heat map from 0 (black) to ``vmax`` units and above
    (white-yellow). ``original``: their panel."""
    distances = reference_distances(encoder, imgs, reference)  # (N, h, w), or a finer grid in several views
    pixels = F.interpolate(distances[:, None], size=imgs.shape[-2:], mode="nearest")[:, 0]  # each cell one value
    return DistanceMap(original, heat_colours(pixels, vmax), distances)
