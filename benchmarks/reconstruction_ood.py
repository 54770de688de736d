"""Whether each image's reconstruction loss tells images unlike an MAE's training ones from like ones (`openmae
evaluate` of a pretrained MAE, `--predictions`): an MAE pretrained on one named dataset (``--own``: the demo's,
Fashion-MNIST; or CIFAR-10) measured on that dataset's training and test photos, on the other one's test photos and
on the ImageNet sample photos (each read as the model takes them: grey at 28 px, or colour at 32 px), every image
masked by its place in its split. Four scores of each image: the model's loss, a generic inpainter's squared error
of the removed pixels (a blur of the visible ones: the image's own difficulty), the model's squared error of them
over the inpainter's (the relative loss) and the atypicality against the own training photos measured first (the
reference: `evaluate.reference`). Prints each set's means and the ROC-AUC of each score telling each other set from
the own test photos (0.5: no better than chance; below it: the score ranks them the other way).

    python benchmarks/reconstruction_ood.py --init runs/demo/pretrain/model-last.pth --out runs/reconstruction_ood
    python benchmarks/reconstruction_ood.py --own cifar10 --init runs/c10/model-last.pth --out runs/reconstruction_ood_c10

Writes <out>/results.json and <out>/reconstruction_ood.png (each set's per-image loss and relative loss).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from openmae.config import load_config  # noqa: E402
from openmae.data.datasets import default_root  # noqa: E402
from openmae.engine.evaluate import run_evaluate  # noqa: E402
from openmae.engine.task_config import EvaluateConfig  # noqa: E402
from openmae.eval.ranking import roc_auc  # noqa: E402

IMAGES = 2000
NAMES = {"fashion-mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}
SCORES = {"loss": "the model's loss", "inpainting_loss": "the inpainter's error", "relative_loss": "relative loss",
          "atypicality": "atypicality"}


def sets(root: Path, own: str) -> dict[str, list[str]]:
    """Each set's data settings, the own dataset's training photos first (the atypicality's reference), then its test
    photos (the ROC-AUCs' negatives)."""
    other = next(name for name in NAMES if name != own)
    return {
        f"{NAMES[own]} train": [f"data.name={own}", "data.eval_split=train", f"data.max_eval_samples={IMAGES}"],
        f"{NAMES[own]} test": [f"data.name={own}", f"data.max_eval_samples={IMAGES}"],
        f"{NAMES[other]} test": [f"data.name={other}", f"data.max_eval_samples={IMAGES}"],
        "ImageNet sample": ["data.name=folder", f"data.path={root / 'imagenet-sample'}"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--init", default="runs/demo/pretrain/model-last.pth")
    parser.add_argument("--out", default="runs/reconstruction_ood")
    parser.add_argument("--own", choices=sorted(NAMES), default="fashion-mnist",
                        help="the dataset the MAE was pretrained on (its test photos are the reference)")
    parser.add_argument("--data-root", default=str(default_root()))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out, root = Path(args.out), Path(args.data_root)
    out.mkdir(parents=True, exist_ok=True)
    values, results, reference = {}, {}, ""
    for name, data in sets(root, args.own).items():
        table = out / f"{name.replace(' ', '_')}.csv"
        result = run_evaluate(load_config(EvaluateConfig, overrides=[
            f"evaluate.init={args.init}", f"data.root={root}", "data.num_workers=2", f"evaluate.reference={reference}",
            f"evaluate.predictions={table}", *data]))
        reference = reference or str(table)  # the first set's table: the others' reference
        rows = list(csv.DictReader(table.open()))
        values[name] = {key: np.array([float(row[key]) for row in rows]) for key in SCORES if key in rows[0]}
        results[name] = {"images": result["samples"], "psnr": result["psnr"],
                         **{key: result[key] for key in (*SCORES, "atypical_share") if key in result}}
    own = f"{NAMES[args.own]} test"
    negatives = values[own]
    for name, scores in list(values.items())[2:]:  # the other sets' images the positives: a higher score says "unlike"
        is_other = np.r_[np.zeros(len(negatives["loss"]), bool), np.ones(len(scores["loss"]), bool)]
        results[name]["auc_against_test"] = {
            key: roc_auc(np.concatenate([negatives[key], scores[key]]), is_other) for key in SCORES}
    print(f"ROC-AUC of each score telling each set from the {own} photos:")
    for name, r in results.items():
        aucs = ", ".join(f"{SCORES[k]} {v:.3f}" for k, v in r.get("auc_against_test", {}).items()) or "-"
        typical = (f", atypicality {r['atypicality']:.2f} ({100 * r['atypical_share']:.1f}% beyond the reference's 95th "
                   "percentile)") if "atypicality" in r else " (the reference)"
        print(f"{name:<20} {r['images']:>5} images: loss {r['loss']:.4f}, inpainter {r['inpainting_loss']:.4f}, "
              f"relative {r['relative_loss']:.3f}{typical}, PSNR {r['psnr']:.2f} dB; ROC-AUC {aucs}")
    (out / "results.json").write_text(json.dumps({"init": args.init, "own": args.own, "sets": results}, indent=1))
    draw(values, out / "reconstruction_ood.png", f"{NAMES[args.own]} MAE")
    print(f"wrote {out / 'results.json'} and {out / 'reconstruction_ood.png'}")


def draw(values: dict[str, dict[str, np.ndarray]], path: Path, model: str) -> None:
    """Each set's per-image loss, relative loss and atypicality as histograms."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), dpi=130)
    for ax, key, label in ((axes[0], "loss", "loss of the removed patches, per image"),
                           (axes[1], "relative_loss", "squared error over a generic inpainter's, per image"),
                           (axes[2], "atypicality", "atypicality against the training photos, per image")):
        shown = {name: scores for name, scores in values.items() if key in scores}
        bins = np.linspace(0, np.quantile(np.concatenate([v[key] for v in shown.values()]), 0.995), 60)
        for name, scores in shown.items():  # each set in its own colour in every panel
            ax.hist(scores[key], bins=bins, histtype="step", lw=1.4, density=True, color=f"C{list(values).index(name)}",
                    label=f"{name} (mean {scores[key].mean():.3f})")
        ax.set_xlabel(label)
        ax.set_ylabel("density")
        ax.set_title(f"{model}: {SCORES[key]} of each image", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
