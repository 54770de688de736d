"""Does an error map point at what is foreign in an image? Fashion-MNIST test images with a square of a grey
CIFAR-10 photo pasted in (a stand-in for a defect or a lesion: a texture unlike any training image), scored pixel by
pixel by the squared error of an MAE trained on Fashion-MNIST (`openmae visualize --errors`: every patch predicted
while removed, by passes whose masks cover the image) and by a blur inpainter's under the same masks (no model: how
hard each pixel is to fill in from its surroundings, `openmae.eval.inpainting`).

Pixel ROC-AUC: the pasted pixels against the other pixels of the same images. Image ROC-AUC: each image's mean
squared error (what `visualize --errors` logs), the pasted-into images against the same images untouched. A third
score divides each pixel's MAE error by the inpainter's (each plus 0.1): its difficulty divided out. Three more score
each patch by how far its token lies from the nearest patch token of training images (``--reference`` of them, none
pasted into; the image's score its farthest patch, as nearest-neighbour anomaly detectors score): the MAE encoder's
tokens (`openmae.eval.feature_map.patch_tokens`), the same architecture's at random initialisation, and the patches'
own pixels.

    python benchmarks/error_maps.py runs/frozen_encoder/whole/model-last.pth \
        runs/relative_ood/fashion_mnist_normpix/model-last.pth -o docs/figures/error_maps.png

Writes the numbers as JSON (--json) and a figure (-o): examples, and the ROC-AUCs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import openmae
from openmae.convert.files import load_file
from openmae.data.build import eval_batches
from openmae.data.config import DataConfig
from openmae.data.datasets import default_root, stats_for
from openmae.data.normalization import inherit_stats
from openmae.eval.error_map import COLORMAP, covered_mean, error_map
from openmae.eval.feature_map import patch_tokens
from openmae.eval.inpainting import inpaint, visible_pixels
from openmae.eval.patch_distance import bank_of, nearest
from openmae.eval.ranking import roc_auc
from openmae.models.masking import covering_noise, plan_from_noise
from openmae.models.patches import patchify, unpatchify

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SCORERS = [("mae", "MAE's squared error"), ("inpainter", "blur inpainter's"), ("ratio", "MAE / blur (+0.1 each)"),
           ("distance", "MAE tokens' distance"), ("random_distance", "random encoder's"),
           ("pixel_distance", "pixels' distance")]
FLOOR = 0.1  # squared errors below a tenth of the data's variance count as none in the ratio of the two maps


def pasted(images: torch.Tensor, root: Path, size: int, mean: float, std: float, seed: int
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """``images`` (N, 1, H, W, normalised) each with a size x size square of a grey CIFAR-10 test photo (one photo an
    image, spread over the classes) pasted at a random place; returns them and the pasted pixels (N, H, W)."""
    photos = sorted((root / "cifar10" / "test").glob("*/*.jpg"))
    gen = np.random.default_rng(seed)
    out, where = images.clone(), torch.zeros(images.shape[0], *images.shape[2:], dtype=torch.bool)
    h, w = images.shape[2:]
    for i in range(images.shape[0]):
        grey = np.asarray(Image.open(photos[i * len(photos) // images.shape[0]]).convert("L"), dtype=np.float32) / 255
        y, x = gen.integers(0, grey.shape[0] - size + 1), gen.integers(0, grey.shape[1] - size + 1)
        top, left = gen.integers(0, h - size + 1), gen.integers(0, w - size + 1)
        patch = torch.from_numpy(grey[y : y + size, x : x + size])
        out[i, 0, top : top + size, left : left + size] = (patch - mean) / std
        where[i, top : top + size, left : left + size] = True
    return out, where


def inpainter_errors(model: openmae.MaskedAutoencoder, imgs: torch.Tensor, seed: int) -> torch.Tensor:
    """(N, H, W): the blur inpainter's squared error of each pixel, filled in under the masks the model's map uses."""
    m = model.cfg
    target = patchify(imgs, m.patch_size)

    def passes():
        for noise in covering_noise(imgs.shape[0], model.num_patches, 0.75, torch.Generator().manual_seed(seed)):
            mask = plan_from_noise(noise, 0.75).mask
            filled = inpaint(imgs, visible_pixels(mask, m.grid, m.patch_size), sigma=float(m.patch_size))
            yield patchify(filled, m.patch_size), mask

    pred = covered_mean(passes())
    return unpatchify((pred - target) ** 2, m.patch_size, m.img_size, m.in_chans).mean(dim=1)


def measure(errors: torch.Tensor, clean: torch.Tensor, where: torch.Tensor, image: str = "mean") -> dict[str, float]:
    """Pixel and image ROC-AUC of maps (N, H, W); an image scored by its map's mean or max (``image``)."""
    score = (lambda m: m.mean((1, 2))) if image == "mean" else (lambda m: m.amax((1, 2)))
    return {"pixel_auc": roc_auc(errors.flatten().numpy(), where.flatten().numpy()),
            "image_auc": roc_auc(torch.cat([score(errors), score(clean)]).numpy(),
                                 np.r_[np.ones(len(errors)), np.zeros(len(clean))].astype(bool))}


def distance_maps(tokens: Callable[[torch.Tensor], torch.Tensor], reference: torch.Tensor, patch: int,
                  *images: torch.Tensor) -> list[torch.Tensor]:
    """For each of ``images`` (N, C, H, W), the map (N, H, W) of each patch's Euclidean distance from the nearest of
    the ``reference`` images' patch tokens (any place); ``tokens``: images -> (N, h, w, D)."""
    bank = bank_of(tokens(reference))  # the reference's (R, h, w, D)
    maps = []
    for imgs in images:
        queries = tokens(imgs)  # (N, h, w, D)
        distances = nearest(queries.flatten(0, 2), bank).reshape(queries.shape[:3])  # as `visualize --distances`
        maps.append(F.interpolate(distances[:, None], scale_factor=patch)[:, 0])
    return maps


def token_scorers(model: openmae.MaskedAutoencoder, seed: int) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Images -> patch tokens (N, h, w, D): the MAE encoder's, a random encoder's of its architecture, the pixels'."""
    torch.manual_seed(seed)
    random = openmae.MaskedAutoencoder(model.cfg).eval()
    p, grid = model.cfg.patch_size, model.cfg.grid

    def batched(encoder: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda x: torch.cat([patch_tokens(encoder, part) for part in x.split(250)])

    return {"distance": batched(model), "random_distance": batched(random),
            "pixel_distance": lambda x: patchify(x, p).reshape(len(x), *grid, -1)}


def arguments(doc: str) -> argparse.ArgumentParser:
    """The options of the pasted-square benchmarks (this one, `coreset.py`)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="MAEs pretrained on Fashion-MNIST")
    parser.add_argument("--data-root", default=str(default_root()))
    parser.add_argument("--images", type=int, default=1000, help="Fashion-MNIST test images")
    parser.add_argument("--size", type=int, default=8, help="the pasted square's side (pixels)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference", type=int, default=4000, help="training images whose patch tokens the "
                        "distance scores search")
    parser.add_argument("--json", default="", help="write the numbers there")
    return parser


@dataclass
class Case:
    """An MAE, its data's settings and statistics, the test images (N, 1, H, W) untouched and pasted into, and the
    pasted pixels (N, H, W)."""

    model: openmae.MaskedAutoencoder
    data: DataConfig
    mean: tuple[float, ...]
    std: tuple[float, ...]
    clean: torch.Tensor
    foreign: torch.Tensor
    where: torch.Tensor


def case(path: str, args: argparse.Namespace) -> Case:
    """The :class:`Case` of the checkpoint ``path``."""
    obj = load_file(path)
    model = openmae.load_pretrained(obj).eval()
    data = DataConfig(name="fashion-mnist", root=args.data_root, num_workers=0)
    inherit_stats(data, obj, path, 1)
    mean, std = stats_for(data, 1)
    clean = torch.cat([b.images for b in eval_batches(data, "test", model.cfg.img_size, 1, 250, args.images)])
    foreign, where = pasted(clean, Path(args.data_root), args.size, mean[0], std[0], args.seed)
    return Case(model, data, mean, std, clean, foreign, where)


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("-o", "--figure", default="", help="write the figure there")
    args = parser.parse_args()
    results: dict = {"images": args.images, "size": args.size, "seed": args.seed, "models": {}}
    shown = []
    for path in args.checkpoints:
        c = case(path, args)
        model, data, mean, std, clean, foreign, where = c.model, c.data, c.mean, c.std, c.clean, c.foreign, c.where
        maps = {name: error_map(model, imgs, mean, std, 0.75, seed=args.seed) for name, imgs in
                (("clean", clean), ("pasted", foreign))}
        blur = {name: inpainter_errors(model, imgs, args.seed) for name, imgs in (("clean", clean), ("pasted", foreign))}
        name = f"{Path(path).parent.name} ({'norm_pix' if model.cfg.norm_pix_loss else 'pixel'} targets)"
        ratio = {k: (maps[k].errors + FLOOR) / (blur[k] + FLOOR) for k in maps}  # each pixel's difficulty divided out
        reference = torch.cat([b.images for b in eval_batches(data, "train", model.cfg.img_size, 1, 250,
                                                              args.reference)])
        p = model.cfg.patch_size
        results["models"][name] = {
            "checkpoint": path, "mae": measure(maps["pasted"].errors, maps["clean"].errors, where),
            "inpainter": measure(blur["pasted"], blur["clean"], where),
            "ratio": measure(ratio["pasted"], ratio["clean"], where),
            **{scorer: measure(*distance_maps(fn, reference, p, foreign, clean), where, image="max")
               for scorer, fn in token_scorers(model, args.seed).items()}}
        print(f"[error maps] {name}: {json.dumps(results['models'][name])}", flush=True)
        shown.append((name, maps["pasted"], blur["pasted"], where))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.figure:
        draw(shown, results, Path(args.figure))


def draw(shown: list, results: dict, path: Path, examples: int = 5) -> None:
    """Per model: a row of pasted images, its reconstructions and error maps, the inpainter's; then the ROC-AUCs."""
    rows = 4 * len(shown)
    fig = plt.figure(figsize=(2 + 1.3 * examples + 4, 1.25 * rows), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[1.3 * examples + 2, 4])
    axes = left.subplots(rows, examples, squeeze=False)
    colours = matplotlib.colormaps[COLORMAP]
    for k, (name, maps, blur, where) in enumerate(shown):
        panels = [("pasted in", maps.original[:, 0].numpy(), "gray"), ("MAE", maps.reconstruction[:, 0].numpy(), "gray"),
                  ("MAE error", maps.heat.permute(0, 2, 3, 1).numpy(), None),
                  ("blur's error", colours(blur.clamp(0, 1).numpy())[..., :3], None)]
        for r, (label, images, cmap) in enumerate(panels):
            for j in range(examples):
                ax = axes[4 * k + r, j]
                ax.imshow(images[j], cmap=cmap, vmin=0, vmax=1)
                ax.contour(where[j].numpy(), levels=[0.5], colors="cyan", linewidths=0.6)
                ax.set_xticks([])
                ax.set_yticks([])
            axes[4 * k + r, 0].set_ylabel(label if r else f"{name.split(' (')[0]}\n{label}", fontsize=7)
    bars = right.subplots(2, 1)
    labels = list(results["models"])
    for ax, key, title in zip(bars, ("pixel_auc", "image_auc"), ("pixels: pasted vs the rest",
                                                                   "images: pasted into vs untouched"), strict=True):
        x = np.arange(len(labels))
        scorers = [(s, label) for s, label in SCORERS if all(s in results["models"][m] for m in labels)]
        width = 0.84 / len(scorers)
        for i, (scorer, label) in enumerate(scorers):
            offset = (i - (len(scorers) - 1) / 2) * width
            values = [results["models"][m][scorer][key] for m in labels]
            ax.bar(x + offset, values, width, label=label)
            for xi, v in zip(x + offset, values, strict=True):
                ax.text(xi, v + 0.01, f"{v:.2f}", ha="center", fontsize=5.5)
        ax.set_xticks(x, [m.replace(" (", "\n(") for m in labels], fontsize=7)
        ax.set(ylim=(0.3, 1.05), ylabel="ROC-AUC", title=title)
        ax.axhline(0.5, color="grey", lw=0.5)
        ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
