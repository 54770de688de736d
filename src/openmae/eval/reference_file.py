"""A reference's patch tokens kept in a file (`visualize --distances <folder> --save-reference bank.safetensors`,
`evaluate.save_reference`), so that later commands search them without reading the reference images again (minutes
for a large model on a CPU): `visualize --distances bank.safetensors`, `evaluate.reference_images=bank.safetensors`.

The file (safetensors: no pickled objects) holds the bank's tokens, each one's image, the unit, how the images were
read (input size, normalisation) and the tokens of a fixed probe image; with shifted views of the patch grid
(:mod:`openmae.eval.grid_views`), those of each view (``tokens.<view>``, ``image.<view>``; version 2 of the format,
version 1 without). A later command's encoder must give the same probe tokens (the same weights, input size and
pooling) and read its images as the reference's were, or the file is refused: its distances would measure the
change of model, not the images."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from openmae.config import ConfigError
from openmae.data.config import DataConfig
from openmae.data.transforms import eval_crop_pct
from openmae.eval.feature_map import patch_tokens
from openmae.eval.patch_distance import (
    REFERENCE_IMAGES,
    PatchBank,
    PatchReference,
    ReferenceImages,
    Split,
    patch_of,
    read_reference,
    search_device,
)

log = logging.getLogger(__name__)

KEY = "openmae_patch_bank"  # the metadata entry that makes a .safetensors file a reference's bank
VERSION = 2  # written with several views of the patch grid; one view's file is version 1's (older versions read it)
READ_VERSIONS = (1, 2)
PROBE_SEED = 0  # the probe image: standard normal noise of the model's input, drawn with this seed
PROBE_TOLERANCE = 1e-2  # relative distance of the probe's tokens: float32 on another device or thread count stays
# far below it (~1e-6), another model's weights far above (~1)


def is_bank_file(path: str) -> bool:
    """Whether ``path`` names a kept reference (a ``.safetensors`` file) rather than reference images."""
    return Path(path).suffix.lower() == ".safetensors"


def probe_tokens(encoder: nn.Module, img_size: tuple[int, int], channels: int) -> torch.Tensor:
    """The patch tokens (1, h, w, D) of the probe image: what identifies the encoder that made a bank."""
    probe = torch.randn(1, channels, *img_size, generator=torch.Generator().manual_seed(PROBE_SEED))
    return patch_tokens(encoder, probe)


def view_key(name: str, view: int) -> str:
    """The tensor ``name`` ("tokens", "image") of view ``view`` in the file (the first view's without a suffix)."""
    return name if view == 0 else f"{name}.{view}"


def save_bank(reference: PatchReference, path: str, encoder: nn.Module, img_size: tuple[int, int], channels: int,
              mean: tuple[float, ...], std: tuple[float, ...], crop_pct: float, source: str, coreset: float) -> Path:
    """Writes ``reference`` (each view's bank) to ``path`` (atomically), with what :func:`load_bank` checks."""
    from openmae.convert.files import save_file

    first = reference.banks[0]
    how = {"version": VERSION if reference.views > 1 else 1, "scale": first.scale, "images": first.images,
           "img_size": list(img_size), "channels": channels, "mean": list(mean), "std": list(std),
           "crop_pct": crop_pct, "reference": source, "coreset": coreset}
    if reference.views > 1:
        how.update(views=reference.views, scales=[bank.scale for bank in reference.banks])
    tensors = {"probe": probe_tokens(encoder, img_size, channels)}
    for view, bank in enumerate(reference.banks):
        tensors |= {view_key("tokens", view): bank.tokens.float().cpu(), view_key("image", view): bank.image.cpu()}
    written = save_file(tensors, path, metadata={KEY: how})
    views = f" ({reference.views} views of the patch grid)" if reference.views > 1 else ""
    log.info("the reference's %d patch tokens%s kept in %s (--distances %s, evaluate.reference_images=%s read them)",
             reference.token_count, views, written, written, written)
    return written


def bank_summary(path: str) -> dict[str, Any] | None:
    """What a kept reference holds (`openmae info`): its tokens' count and width and how it was made; None where
    ``path`` is no such file."""
    from safetensors import safe_open

    if not is_bank_file(path) or not Path(path).is_file():
        return None
    try:
        with safe_open(path, "pt") as fh:
            meta = fh.metadata() or {}
            shape = fh.get_slice("tokens").get_shape() if KEY in meta else None
    except Exception:  # not readable as safetensors: left to the weights' summary, which says why
        return None
    if shape is None:
        return None
    return {"path": path, "kind": "a reference's patch tokens (visualize --save-reference / evaluate.save_reference)",
            "tokens": shape[0], "width": shape[1], "views": 1, **json.loads(meta[KEY])}


def format_bank(info: dict[str, Any]) -> str:
    """:func:`bank_summary` as lines to read."""
    coreset = f", a coreset of {info['coreset']:g} of their tokens" if info["coreset"] < 1 else ""
    views = (f"; in {info['views']} views of the patch grid (evaluate.map_views), as many tokens each"
             if info["views"] > 1 else "")
    return "\n".join([
        f"{info['path']}: {info['kind']}",
        f"  {info['tokens']} tokens of width {info['width']}, from {info['images']} images of {info['reference']}"
        f"{coreset}{views}",
        f"  read at {info['img_size'][0]}x{info['img_size'][1]} (centre crop {info['crop_pct']:g}), {info['channels']} "
        f"channels, mean {info['mean']}, std {info['std']}; unit (the reference's 99th percentile) {info['scale']:.4g}",
        f"  searched by: openmae visualize --distances {info['path']}, or evaluate.reference_images={info['path']} "
        "(with the encoder that made it)"])


def _refuse(path: str, what: str) -> ValueError:
    return ValueError(f"{path}: {what}; read the reference images again (give their folder or CSV list instead), "
                      "or the file kept with this encoder and these settings")


def load_bank(path: str, encoder: nn.Module, img_size: tuple[int, int], channels: int, mean: tuple[float, ...],
              std: tuple[float, ...], crop_pct: float) -> PatchReference:
    """The :class:`PatchReference` kept in ``path`` by :func:`save_bank`, refused where ``encoder`` gives other probe
    tokens or the images would be read otherwise (input size, channels, normalisation, the evaluation's centre
    crop)."""
    from safetensors import safe_open

    if not Path(path).is_file():
        raise FileNotFoundError(f"no such reference file: {path} (write one with --save-reference or "
                                "evaluate.save_reference)")
    try:
        with safe_open(path, "pt") as fh:
            meta = fh.metadata() or {}
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}
    except Exception as err:  # safetensors' own SafetensorError derives from Exception alone
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    if KEY not in meta:
        raise ValueError(f"{path} holds no reference's patch tokens (it is no file that --save-reference or "
                         "evaluate.save_reference wrote): give reference images, a folder or CSV list")
    how = json.loads(meta[KEY])
    if how["version"] not in READ_VERSIONS:
        raise _refuse(path, f"written in version {how['version']} of the format, this openmae reads versions "
                            f"{', '.join(map(str, READ_VERSIONS))} (a newer openmae wrote it: update openmae)")
    for name, kept, now in (("input size", how["img_size"], list(img_size)), ("channels", how["channels"], channels),
                            ("mean", how["mean"], list(mean)), ("std", how["std"], list(std)),
                            ("centre crop (data.eval_crop_pct)", how["crop_pct"], crop_pct)):
        if (torch.tensor(kept, dtype=torch.float64) - torch.tensor(now, dtype=torch.float64)).abs().max() > 1e-6:
            raise _refuse(path, f"its reference images were read with {name} {kept}, these with {now}")
    kept_probe, probe = tensors["probe"], probe_tokens(encoder, img_size, channels)
    if kept_probe.shape != probe.shape:
        raise _refuse(path, f"made with another encoder: its probe tokens are {tuple(kept_probe.shape)}, this "
                            f"encoder's {tuple(probe.shape)}")
    off = float((probe - kept_probe).norm() / kept_probe.norm().clamp_min(1e-12))
    if off > PROBE_TOLERANCE:
        raise _refuse(path, f"made with another encoder (other weights): the tokens of the same probe image differ "
                            f"by {off:.3g} of their size (at most {PROBE_TOLERANCE} for the same)")
    views, scales = int(how.get("views", 1)), how.get("scales", [how["scale"]])
    banks = [PatchBank(tensors[view_key("tokens", v)], tensors[view_key("image", v)], float(scales[v]),
                       int(how["images"])) for v in range(views)]
    log.info("the patch tokens of the reference kept in %s: %d tokens of %d images (%s%s%s)", path,
             sum(len(bank.tokens) for bank in banks), how["images"], how["reference"],
             f", a coreset of {how['coreset']:g}" if how["coreset"] < 1 else "",
             f", {views} views of the patch grid" if views > 1 else "")
    return PatchReference(banks, patch_of(encoder))


def reference_of(distances: str | None, max_images: int | None, coreset: float | None, save: str | None,
                 views: int | None = None) -> ReferenceImages | None:
    """The reference of `visualize`'s options (``--distances``, ``--reference-images``, ``--coreset``,
    ``--save-reference``, ``--map-views``; None where not given), or None without ``--distances``; refused: the
    others without it."""
    searched = {k: v for k, v in (("max_images", max_images), ("coreset", coreset), ("save", save), ("views", views))
                if v is not None}
    if distances is None:
        if searched:
            raise ConfigError("--coreset, --reference-images, --save-reference and --map-views set how the reference "
                              "of --distances is read: give --distances <folder or CSV list of reference images>, or "
                              "leave them out")
        return None
    if save is not None and not save.endswith(".safetensors"):
        raise ConfigError(f"--save-reference {save}: give a file name ending in .safetensors")
    return ReferenceImages(distances, **searched)


def reference_bank(encoder: nn.Module, reference: ReferenceImages, data: DataConfig, img_size: tuple[int, int],
                   channels: int, mean: tuple[float, ...], std: tuple[float, ...], split: Split | None = None
                   ) -> PatchReference:
    """The banks of ``reference``: read from a kept file (``reference.path`` a ``.safetensors`` file; in the views it
    was kept in), or from its images (:func:`openmae.eval.patch_distance.read_reference`), then kept in
    ``reference.save`` where given (by the main process)."""
    crop = eval_crop_pct(data.eval_crop_pct, img_size)  # what the reference's images were cut to
    if is_bank_file(reference.path):
        if reference.coreset != 1 or reference.max_images != REFERENCE_IMAGES or reference.save:
            raise ValueError(f"{reference.path} is a kept reference, searched as it was kept: a coreset share, a "
                             "number of reference images and a file to keep it in apply to reference images (a "
                             "folder or CSV list)")
        kept = load_bank(reference.path, encoder, img_size, channels, mean, std, crop)
        if reference.views not in (1, kept.views):  # (1: the default, the file's views used)
            raise ValueError(f"{reference.path} was kept in {kept.views} view(s) of the patch grid, and "
                             f"{reference.views} are asked for: leave the number of views out (the file's are used), "
                             "or read the reference images again in those views")
        return kept.to(search_device(kept.token_count, kept.banks[0].tokens.shape[1], encoder))
    read = read_reference(encoder, reference, data, img_size, channels, mean, std, split)
    if reference.save and (split is None or split.main):
        save_bank(read, reference.save, encoder, img_size, channels, mean, std, crop, reference.path,
                  reference.coreset)
    return read
