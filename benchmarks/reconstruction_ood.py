"""Whether each image's reconstruction loss tells images unlike an MAE's training ones from like ones (`openmae
evaluate` of a pretrained MAE, `--predictions`): the demo's encoder (pretrained on Fashion-MNIST) measured on Fashion-MNIST
training and test photos, on CIFAR-10 test photos and on the ImageNet sample photos (both read grey at 28 px, as
the model takes them), every image masked by its place in its split. Prints each set's mean loss and PSNR and the
ROC-AUC of the loss telling each other set from the Fashion-MNIST test photos (0.5: no better than chance).

    python benchmarks/reconstruction_ood.py --init runs/demo/pretrain/model-last.pth --out runs/reconstruction_ood

Writes <out>/results.json and <out>/reconstruction_ood.png (each set's per-image losses).
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


def sets(root: Path) -> dict[str, list[str]]:
    """Each set's data settings."""
    return {
        "Fashion-MNIST test": ["data.name=fashion-mnist", f"data.max_eval_samples={IMAGES}"],
        "Fashion-MNIST train": ["data.name=fashion-mnist", "data.eval_split=train", f"data.max_eval_samples={IMAGES}"],
        "CIFAR-10 test": ["data.name=cifar10", f"data.max_eval_samples={IMAGES}"],
        "ImageNet sample": ["data.name=folder", f"data.path={root / 'imagenet-sample'}"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--init", default="runs/demo/pretrain/model-last.pth")
    parser.add_argument("--out", default="runs/reconstruction_ood")
    parser.add_argument("--data-root", default=str(default_root()))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out, root = Path(args.out), Path(args.data_root)
    out.mkdir(parents=True, exist_ok=True)
    losses, results = {}, {}
    for name, data in sets(root).items():
        table = out / f"{name.replace(' ', '_')}.csv"
        result = run_evaluate(load_config(EvaluateConfig, overrides=[
            f"evaluate.init={args.init}", f"data.root={root}", "data.num_workers=2",
            f"evaluate.predictions={table}", *data]))
        losses[name] = np.array([float(row["loss"]) for row in csv.DictReader(table.open())])
        results[name] = {"images": result["samples"], "loss": result["loss"], "psnr": result["psnr"]}
    reference = losses["Fashion-MNIST test"]
    for name, values in losses.items():
        if name != "Fashion-MNIST test":  # the other set's images the positives: a higher loss says "not like it"
            scores = np.concatenate([reference, values])
            results[name]["auc_against_test"] = roc_auc(scores, np.r_[np.zeros(len(reference), bool), np.ones(len(values), bool)])
    for name, r in results.items():
        auc = f", ROC-AUC against the test photos {r['auc_against_test']:.3f}" if "auc_against_test" in r else ""
        print(f"{name:<20} {r['images']:>5} images: loss {r['loss']:.4f}, PSNR {r['psnr']:.2f} dB{auc}")
    (out / "results.json").write_text(json.dumps({"init": args.init, "sets": results}, indent=1))
    fig, ax = plt.subplots(figsize=(6.5, 3.8), dpi=130)
    bins = np.linspace(0, np.quantile(np.concatenate(list(losses.values())), 0.995), 60)
    for name, values in losses.items():
        ax.hist(values, bins=bins, histtype="step", lw=1.4, density=True, label=f"{name} (mean {values.mean():.3f})")
    ax.set_xlabel("loss of the removed patches, per image")
    ax.set_ylabel("density")
    ax.set_title("Fashion-MNIST MAE: reconstruction loss of each image", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "reconstruction_ood.png")
    print(f"wrote {out / 'results.json'} and {out / 'reconstruction_ood.png'}")


if __name__ == "__main__":
    main()
