"""Does an error map point at what is foreign in an image? Fashion-MNIST test images with a square of a grey
CIFAR-10 photo pasted in (a stand-in for a defect or a lesion: a texture unlike any training image), scored pixel by
pixel by the squared error of an MAE trained on Fashion-MNIST (`openmae visualize --errors`: every patch predicted
while removed, by passes whose masks cover the image) and by a blur inpainter's under the same masks (no model: how
hard each pixel is to fill in from its surroundings, `openmae.eval.inpainting`).

Pixel ROC-AUC: the pasted pixels against the other pixels of the same images. Image ROC-AUC: each image's mean
squared error (what `visualize --errors` logs), the pasted-into images against the same images untouched. A third
score divides each pixel's MAE error by the inpainter's (each plus 0.1): its difficulty divided out.

    python benchmarks/error_maps.py runs/frozen_encoder/whole/model-last.pth \
        runs/relative_ood/fashion_mnist_normpix/model-last.pth -o docs/figures/error_maps.png

Writes the numbers as JSON (--json) and a figure (-o): examples, and the ROC-AUCs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib
import numpy as np
import torch
from PIL import Image

import openmae
from openmae.convert.files import load_file
from openmae.data.build import eval_batches
from openmae.data.config import DataConfig
from openmae.data.datasets import default_root, stats_for
from openmae.data.normalization import inherit_stats
from openmae.eval.error_map import COLORMAP, covered_mean, error_map
from openmae.eval.inpainting import inpaint, visible_pixels
from openmae.eval.ranking import roc_auc
from openmae.models.masking import covering_noise, plan_from_noise
from openmae.models.patches import patchify, unpatchify

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

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


def measure(errors: torch.Tensor, clean: torch.Tensor, where: torch.Tensor) -> dict[str, float]:
    return {"pixel_auc": roc_auc(errors.flatten().numpy(), where.flatten().numpy()),
            "image_auc": roc_auc(torch.cat([errors.mean((1, 2)), clean.mean((1, 2))]).numpy(),
                                 np.r_[np.ones(len(errors)), np.zeros(len(clean))].astype(bool))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="MAEs pretrained on Fashion-MNIST")
    parser.add_argument("--data-root", default=str(default_root()))
    parser.add_argument("--images", type=int, default=1000, help="Fashion-MNIST test images")
    parser.add_argument("--size", type=int, default=8, help="the pasted square's side (pixels)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="", help="write the numbers there")
    parser.add_argument("-o", "--figure", default="", help="write the figure there")
    args = parser.parse_args()
    root = Path(args.data_root)
    results: dict = {"images": args.images, "size": args.size, "seed": args.seed, "models": {}}
    shown = []
    for path in args.checkpoints:
        obj = load_file(path)
        model = openmae.load_pretrained(obj).eval()
        data = DataConfig(name="fashion-mnist", root=str(root), num_workers=0)
        inherit_stats(data, obj, path, 1)
        mean, std = stats_for(data, 1)
        clean = torch.cat([b.images for b in eval_batches(data, "test", model.cfg.img_size, 1, 250, args.images)])
        foreign, where = pasted(clean, root, args.size, mean[0], std[0], args.seed)
        maps = {name: error_map(model, imgs, mean, std, 0.75, seed=args.seed) for name, imgs in
                (("clean", clean), ("pasted", foreign))}
        blur = {name: inpainter_errors(model, imgs, args.seed) for name, imgs in (("clean", clean), ("pasted", foreign))}
        name = f"{Path(path).parent.name} ({'norm_pix' if model.cfg.norm_pix_loss else 'pixel'} targets)"
        ratio = {k: (maps[k].errors + FLOOR) / (blur[k] + FLOOR) for k in maps}  # each pixel's difficulty divided out
        results["models"][name] = {
            "checkpoint": path, "mae": measure(maps["pasted"].errors, maps["clean"].errors, where),
            "inpainter": measure(blur["pasted"], blur["clean"], where),
            "ratio": measure(ratio["pasted"], ratio["clean"], where)}
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
        for offset, scorer, label in ((-0.27, "mae", "MAE"), (0, "inpainter", "blur inpainter"),
                                      (0.27, "ratio", "MAE / blur (+0.1 each)")):
            values = [results["models"][m][scorer][key] for m in labels]
            ax.bar(x + offset, values, 0.27, label=label)
            for xi, v in zip(x + offset, values, strict=True):
                ax.text(xi, v + 0.01, f"{v:.3f}", ha="center", fontsize=7)
        ax.set_xticks(x, [m.replace(" (", "\n(") for m in labels], fontsize=7)
        ax.set(ylim=(0.3, 1.05), ylabel="ROC-AUC", title=title)
        ax.axhline(0.5, color="grey", lw=0.5)
        ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
