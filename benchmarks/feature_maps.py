"""What do feature maps (`openmae visualize --features`) show on real images? Fashion-MNIST test images, whose patches
are garment or black background: how well each of the first three principal components of the patch tokens (fitted
as the command fits them: on 64 images spread evenly, each token about its place's mean over them) tells a garment's
patches (over half their pixels lit) from the background's (under 5% lit; the patches between are left out), as a
ROC-AUC whichever way round (0.5: not at all); and how much of each component's variance over the garment patches
the images' classes explain (what kind of garment a patch's colour tells). For several encoders of the demo's
architecture, beside the patches' own pixels as tokens, and with the tokens centred on one mean for every place
instead (what the components draw without the place's mean taken away; how much of their variance is then the
patches' place alone).

    python benchmarks/feature_maps.py mae=runs/demo/pretrain/model-last.pth \
        finetuned=runs/partial_finetune/mae_6/model-best.pth random= -o docs/figures/feature_maps.png

A checkpoint left empty is the demo's architecture at random initialisation. Prints a table, writes the numbers as
JSON (--json) and a figure (-o): eight test images and their feature maps by each encoder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib
import torch
import torch.nn.functional as F

from openmae.data.build import eval_batches
from openmae.data.config import DataConfig
from openmae.data.datasets import default_root, stats_for
from openmae.engine.config import ModelSection
from openmae.engine.knn_eval import load_encoder_model
from openmae.eval.feature_map import FIT_IMAGES, Components, fit_components, patch_tokens
from openmae.eval.ranking import roc_auc
from openmae.models.patches import patchify

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DEMO = ModelSection(name="mae_vit_tiny_patch7_28_gray", depth=6)  # the demo's architecture
LIT, GARMENT, BACKGROUND = 0.1, 0.5, 0.05  # a pixel lit above 0.1; a garment's patch over half lit, background < 5%


def separation(tokens: torch.Tensor, lit: torch.Tensor, by_place: bool) -> list[float]:
    """Each of the first three components' ROC-AUC (whichever way round) of garment against background patches;
    ``tokens`` (N, h, w, D), ``lit`` (N, h, w) each patch's share of lit pixels (:func:`projections`)."""
    projected = projections(tokens, by_place).reshape(-1, 3).numpy()  # (N * h * w, 3)
    share = lit.flatten().numpy()
    kept = (share > GARMENT) | (share < BACKGROUND)
    aucs = [roc_auc(projected[kept, k], share[kept] > GARMENT) for k in range(3)]
    return [max(a, 1 - a) for a in aucs]


def projections(tokens: torch.Tensor, by_place: bool = True) -> torch.Tensor:
    """(N, h, w, 3): the tokens (N, h, w, D) on their first three components, fitted as the command fits them (on
    ``FIT_IMAGES`` of them spread evenly, about each place's mean) or about one mean (``by_place`` false)."""
    fit_on = tokens[torch.linspace(0, len(tokens) - 1, FIT_IMAGES).round().long()]
    comps = fit_components(fit_on if by_place else fit_on.reshape(1, -1, 1, tokens.shape[-1]))
    return ((tokens - comps.mean) @ comps.axes.T).double()


def share_explained(x: torch.Tensor, groups: torch.Tensor) -> list[float]:
    """Of each column of ``x`` (M, K), the share of its variance that ``groups`` (M,) explain: between-group over
    total sum of squares (0: the groups say nothing of it, 1: it is the group alone)."""
    total = ((x - x.mean(0)) ** 2).sum(0)
    between = sum((groups == g).sum() * (x[groups == g].mean(0) - x.mean(0)) ** 2 for g in groups.unique())
    return (between / total).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("encoders", nargs="+", help="name=checkpoint (empty: random initialisation)")
    parser.add_argument("--data-root", default=str(default_root()))
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--json", help="write the numbers there")
    parser.add_argument("-o", "--figure", help="write the figure there")
    args = parser.parse_args()
    data = DataConfig(name="fashion-mnist", root=args.data_root, num_workers=0)
    mean, std = stats_for(data, 1)
    batches = list(eval_batches(data, "test", (28, 28), 1, 250, limit=args.images))
    images, labels = torch.cat([b.images for b in batches]), torch.cat([b.labels for b in batches])
    pixels = images * std[0] + mean[0]  # (N, 1, 28, 28) in [0, 1]
    lit = (patchify(pixels, 7) > LIT).float().mean(-1).reshape(-1, 4, 4)  # (N, 4, 4)
    share = lit.flatten()
    print(f"{len(images)} test images: {int((share > GARMENT).sum())} garment patches, "
          f"{int((share < BACKGROUND).sum())} background, {int(((share >= BACKGROUND) & (share <= GARMENT)).sum())} "
          "between (left out)")
    results: dict = {}
    shown: dict[str, torch.Tensor] = {}
    tokens_of = {"pixels": patchify(images, 7).reshape(-1, 4, 4, 49)}
    for item in args.encoders:
        name, _, path = item.partition("=")
        model, _ = load_encoder_model(DEMO if not path else ModelSection(name="auto"), path, seed=0)
        tokens_of[name] = torch.cat([patch_tokens(model, images[i : i + 250]) for i in range(0, len(images), 250)])
    for name, tokens in tokens_of.items():
        garment = lit.flatten() > GARMENT
        places = torch.arange(16).repeat(len(tokens))  # each patch's place, (N * 16,)
        results[name] = {"by_place": separation(tokens, lit, True), "one_mean": separation(tokens, lit, False),
                         "class_share": share_explained(projections(tokens).reshape(-1, 3)[garment],
                                                        labels.repeat_interleave(16)[garment]),
                         "place_share_one_mean": share_explained(projections(tokens, False).reshape(-1, 3), places)}
        fit_on = tokens[torch.linspace(0, len(tokens) - 1, FIT_IMAGES).round().long()]
        comps: Components = fit_components(fit_on)
        results[name]["explained"] = list(comps.explained)
        shown[name] = F.interpolate(comps.colours(tokens[:8]), size=(28, 28), mode="nearest")
    print("\ngarment against background patches, ROC-AUC of the 1st / 2nd / 3rd component; the share of each one's "
          "variance over the garment patches that the images' classes explain")
    print("tokens      about each place's mean    about one mean             class share"
          "                place share about one mean")
    for name, r in results.items():
        print(f"{name:<11} " + "   ".join(" / ".join(f"{a:.3f}" for a in r[k])
                                          for k in ("by_place", "one_mean", "class_share", "place_share_one_mean")))
    if args.json:
        Path(args.json).write_text(json.dumps({"images": len(images), "results": results}, indent=1))
    if args.figure:
        rows = [("original", pixels[:8].expand(-1, 3, -1, -1))] + list(shown.items())
        fig, axes = plt.subplots(len(rows), 8, figsize=(8, 1.1 * len(rows)), layout="constrained")
        for (label, panel), row in zip(rows, axes, strict=True):
            for j, ax in enumerate(row):
                ax.imshow(panel[j].permute(1, 2, 0).numpy())
                ax.set_xticks([])
                ax.set_yticks([])
            row[0].set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
        fig.suptitle("Fashion-MNIST test images: patches coloured by their tokens' first three principal components",
                     fontsize=9)
        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.figure, dpi=120)


if __name__ == "__main__":
    main()
