"""``openmae visualize``: one PNG per input image (files, a folder or dataset items): its reconstruction, its error map
or its feature map."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from openmae.config import ConfigError
from openmae.convert.checkpoints import TRAIN_A_DECODER, holds_decoder, load_pretrained
from openmae.convert.files import load_file
from openmae.data.arrays import band_stats
from openmae.data.config import CSV_SUFFIXES, DataConfig
from openmae.data.datasets import file_source, stats_for
from openmae.data.draft import with_draft
from openmae.data.folders import find_images
from openmae.data.images import IMAGE_SUFFIXES, BadImageError
from openmae.data.labels import listed_files
from openmae.data.loader import SeededSamples
from openmae.data.normalization import inherit_stats
from openmae.data.scans import suffix_of
from openmae.data.transforms import eval_transform
from openmae.data.volumes import FileVolumes
from openmae.eval.error_map import error_map
from openmae.eval.feature_map import Components, evenly, feature_map, fit_components, patch_tokens
from openmae.eval.patch_distance import PatchReference, ReferenceImages, distance_map
from openmae.eval.reconstruction import Panels, auto_scale, displayed, reconstruct, save_grid
from openmae.eval.reference_file import reference_bank
from openmae.models.config import MAEConfig

log = logging.getLogger(__name__)


def image_paths(inputs: list[str], suffixes: tuple[str, ...] = IMAGE_SUFFIXES,
                columns: tuple[str, ...] = ()) -> list[Path]:
    """The files named, those found in the folders named (with one of ``suffixes``) and those a CSV list names
    (:mod:`openmae.data.labels`; ``columns``: its ``data.csv_columns``)."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += find_images(p, suffixes)
        elif p.is_file() and p.suffix.lower() in CSV_SUFFIXES:
            paths += listed_files(p, columns)
        elif p.is_file():
            paths.append(p)
        else:
            raise FileNotFoundError(f"{item} is neither an image file nor a folder")
    if not paths:
        raise ValueError(f"no images found in {inputs}")
    return paths


def stem_of(path: Path) -> str:
    """A file's name without its suffix (brain.nii.gz: brain)."""
    return path.name[: -len(suffix_of(path))] or path.name


def distinct_names(names: list[str], paths: list[Path]) -> list[str]:
    """``names`` (one per path) with those that repeat told apart by the folders below the one their files share
    (cat/001.jpg and dog/001.jpg: cat-001, dog-001), then by their suffixes (x.webp and x.tif: x-webp, x-tif), then
    by their place in the list: no two files write the same picture."""
    out = list(names)

    def repeats() -> list[list[int]]:
        seen: dict[str, list[int]] = {}
        for i, name in enumerate(out):
            seen.setdefault(name, []).append(i)
        return [ids for ids in seen.values() if len(ids) > 1]

    for ids in repeats():
        shared = Path(os.path.commonpath([paths[i].absolute().parent for i in ids]))
        for i in ids:
            out[i] = "-".join((*paths[i].absolute().parent.relative_to(shared).parts, out[i]))
    for ids in repeats():
        for i in ids:
            out[i] = "-".join(filter(None, (out[i], suffix_of(paths[i]).lstrip(".").replace(".", "-"))))
    for ids in repeats():
        for i in ids[1:]:
            out[i] = f"{out[i]}-{i}"
    return out


def drawing_model(checkpoint: str, data: DataConfig, any_encoder: bool) -> tuple[nn.Module, MAEConfig]:
    """The model ``checkpoint`` holds, for pictures, and its architecture; ``data`` takes the normalisation it
    records when its own is unset. Reconstructions and error maps need an MAE with its decoder (an untrained one would
    draw noise: refused, naming the run that trains one); ``any_encoder`` (feature and distance maps): any encoder,
    a fine-tuned classifier too."""
    # the commands' loader of any encoder (engine's), imported here alone: the rest of eval does not need it
    from openmae.engine.config import ModelSection
    from openmae.engine.knn_eval import load_encoder_model

    if any_encoder:
        return load_encoder_model(ModelSection(name="auto"), checkpoint, data=data)
    obj = load_file(checkpoint)
    model = load_pretrained(obj) if holds_decoder(obj) else None  # (a fine-tuned classifier is no MAE)
    if model is None or model.cfg.decoder_depth == 0:
        raise ConfigError(f"{checkpoint} holds an encoder without its MAE decoder, and visualize needs one to "
                          f"reconstruct: {TRAIN_A_DECODER.format(path=checkpoint)} (--features and --distances draw "
                          "without one)")
    inherit_stats(data, obj, checkpoint, model.cfg.in_chans)  # the pictures normalise as the run trained
    return model, model.cfg


@dataclass
class Drawing:
    """What the pictures show instead of reconstructions: error maps (``errors``: the heat map's scale), feature maps
    (``components``, fitted over the images shown) or distance maps (``bank``, the reference's patch tokens)."""

    errors: float | None = None
    components: Components | None = None
    bank: PatchReference | None = None
    scores: list[tuple[str, float]] = field(default_factory=list)  # each distance map's picture and farthest patch

    def write_scores(self, out_dir: str | Path) -> None:
        """``<out_dir>/distances.csv``: each distance map's picture and its farthest patch, the farthest first."""
        if self.bank is None:
            return
        path = Path(out_dir) / "distances.csv"
        rows = sorted(self.scores, key=lambda row: -row[1])
        path.write_text("picture,farthest_patch\n" + "".join(f"{name}.png,{score:.6f}\n" for name, score in rows))
        log.info("each image's farthest patch, the farthest first: %s", path)


def picture(model: nn.Module, img: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], mask_ratio: float,
            seed: int, stretch: bool, drawing: Drawing, name: str) -> Panels:
    """One image's panels (``name``: how the log calls it): its reconstruction, or what ``drawing`` says."""
    if drawing.components is not None:
        return feature_map(model, img, drawing.components, displayed(img, mean, std, stretch)(img))
    if drawing.bank is not None:
        shown = distance_map(model, img, drawing.bank, displayed(img, mean, std, stretch)(img))
        log.info("%s: farthest patch %.3f (1: the reference's own 99th percentile)", name, float(shown.score[0]))
        drawing.scores.append((name, float(shown.score[0])))
        return shown
    if drawing.errors is None:
        return reconstruct(model, img, mean, std, mask_ratio, seed=seed, stretch=stretch)
    shown = error_map(model, img, mean, std, mask_ratio, seed=seed, vmax=drawing.errors, stretch=stretch)
    log.info("%s: mean squared error %.4f (every patch predicted while removed, %d passes)", name,
             float(shown.errors.mean()), shown.passes)
    return shown


def fitted(model: nn.Module, images: list[torch.Tensor]) -> Components:
    """The components of the patch tokens of ``images`` ((1, C, H, W) each; at most ``FIT_IMAGES``, spread evenly),
    logged with the share of the variance they explain."""
    images = [images[i] for i in evenly(len(images))]
    components = fit_components(torch.cat([patch_tokens(model, img) for img in images]))
    log.info("patches coloured by their features' first %d principal components (red, green, blue: %s of the "
             "variance), fitted on %s", len(components.explained),
             ", ".join(f"{100 * v:.1f}%" for v in components.explained),
             f"the {len(images)} images' patches, each about its place's mean" if len(images) > 1 else
             "one image's patches about their mean (several images take each place's mean away, which leaves out "
             "what the tokens carry of their place)")
    return components


def visualize_files(model: nn.Module, paths: list[Path], out_dir: str | Path, data: DataConfig,
                    mask_ratio: float = 0.75, seed: int = 0, scale: int | None = None, bands: tuple[int, ...] = (),
                    errors: float | None = None, features: bool = False, cfg: MAEConfig | None = None,
                    distances: ReferenceImages | None = None) -> list[Path]:
    """Writes ``<out_dir>/<image stem>.png`` (original | masked | reconstruction | pasted) for each path (a volume:
    its middle slice, of its first volume for a 4-D file; a DICOM series a file a slice: ``<folder>-<its first
    file>.png``); ``bands``: the channels shown (:func:`openmae.eval.reconstruction.grid_image`); ``errors``: the
    error map instead (original | every patch reconstructed | squared error up to ``errors``,
    :mod:`openmae.eval.error_map`); ``features``: original | patches coloured by their features
    (:mod:`openmae.eval.feature_map`; any encoder, its architecture ``cfg`` when it is no MAE); ``distances``: a
    folder (or CSV list) of reference images, original | each patch's distance from the nearest of theirs
    (:mod:`openmae.eval.patch_distance`; any encoder)."""
    m = cfg or model.cfg
    source = file_source(paths, None, m.in_chans, [], replace(data, bad_files="fail"))
    if isinstance(source, FileVolumes):  # a volume's middle slice, named by its file (a series: folder and first file)
        shown = [(f"{scan.path.parent.name}-{stem_of(scan.path)}" if scan.members else stem_of(scan.path),
                  source.middle(v), scan.path)
                 for v, scan in enumerate(source.scans) if scan.volume == 0 and source.counts[v]]  # a 4-D file: its first volume
    else:
        shown = [(stem_of(path), i, path) for i, path in enumerate(paths)]
    names = distinct_names([name for name, _, _ in shown], [path for _, _, path in shown])  # cat/1.jpg, dog/1.jpg
    shown = [(name, item) for name, (_, item, _) in zip(names, shown, strict=True)]
    if data.reads_arrays and data.mean is None and not data.path:  # no training folder named: these files'
        mean, std = band_stats(source)
        log.info("data.mean/std measured on the %d files shown (the checkpoint records none; set them to its "
                 "pretraining's)", len(paths))
    else:
        mean, std = stats_for(data, m.in_chans)
    transform = eval_transform(data, m.img_size, mean, std)
    if data.jpeg_draft and data.format == "image":  # a camera's photo decoded at the scale its resize needs
        transform = with_draft(transform, m.in_chans)
    # read and transformed as the loader does; an unreadable file is left out with a warning (data.bad_files=fail:
    # stops with its name)
    files = SeededSamples(source, transform, bad_files="fail", seeded=False)

    def readable(numbered: list[tuple[int, tuple[str, int]]], warn: bool = True
                 ) -> Iterator[tuple[int, str, torch.Tensor]]:
        for i, (stem, item) in numbered:
            try:
                yield i, stem, files[(item, 0)][0].unsqueeze(0)  # (1, C, H, W)
            except BadImageError as err:
                if data.bad_files == "fail":
                    raise
                if warn:
                    log.warning("no picture of an unreadable image (data.bad_files=fail stops instead): %s", err)

    numbered = list(enumerate(shown))
    drawing = Drawing(errors, bank=reference_bank(model, distances, data, m.img_size, m.in_chans, mean, std)
                      if distances else None)
    if features:  # fitted first, on at most FIT_IMAGES of them spread evenly (read again below)
        fit_on = [img for _, _, img in readable([numbered[k] for k in evenly(len(numbered))], warn=False)]
        drawing.components = fitted(model, fit_on) if fit_on else None
    written = []
    for i, stem, img in readable(numbered):
        rec = picture(model, img, mean, std, mask_ratio, seed + i, data.reads_arrays, drawing, stem)
        written.append(save_grid(rec, Path(out_dir) / f"{stem}.png", scale or auto_scale(m.img_size), bands))
    if not written:
        raise ValueError(f"none of the {len(shown)} images could be read (the warnings above say why)")
    drawing.write_scores(out_dir)
    return written


def visualize_dataset(model: nn.Module, data: DataConfig, out_dir: str | Path, count: int = 8,
                      mask_ratio: float = 0.75, seed: int = 0, bands: tuple[int, ...] = (),
                      errors: float | None = None, features: bool = False, cfg: MAEConfig | None = None,
                      distances: ReferenceImages | None = None) -> list[Path]:
    """Writes ``<out_dir>/<split>-<index>.png`` for the first ``count`` images of the evaluation split (``errors``,
    ``features``, ``distances``: their error, feature or distance maps, as :func:`visualize_files`)."""
    from openmae.data.build import eval_batches

    m = cfg or model.cfg
    mean, std = stats_for(data, m.in_chans)
    split = data.train_split if data.name == "folder" else data.eval_split
    written: list[Path] = []
    drawing = Drawing(errors, bank=reference_bank(model, distances, data, m.img_size, m.in_chans, mean, std)
                      if distances else None)
    for batch in eval_batches(data, split, m.img_size, m.in_chans, count, limit=count):
        images = [batch.images[i : i + 1] for i in range(batch.images.shape[0])]
        drawing.components = fitted(model, images) if features else None
        for img in images:
            name = f"{split}-{len(written):05d}"
            rec = picture(model, img, mean, std, mask_ratio, seed + len(written), data.reads_arrays, drawing, name)
            written.append(save_grid(rec, Path(out_dir) / f"{name}.png", auto_scale(m.img_size), bands))
        break
    drawing.write_scores(out_dir)
    return written
