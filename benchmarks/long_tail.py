"""Long-tailed classes from a CSV list: Fashion-MNIST's images written as PNG files, listed in one CSV file with a
split column (`data.name=csv`), the training rows cut to a long tail (class c keeps 6000 x ratio^(-c/9) images:
6000 down to 60 at ratio 100), the test rows all 10,000 (balanced: their top-1 is their balanced accuracy). A cached
linear probe of an encoder (the demo's recipe) chooses model-best.pth on held-out (long-tailed) training images by
top-1 or by balanced accuracy (`linprobe.select_by`), and reports the test split beside each epoch; "sampling" draws
the long tail class-balanced (`data.balance=classes`); "weights" weighs the loss's classes (`linprobe.class_weights=
balanced`); "adjusted" trains on logit-adjusted logits (`linprobe.logit_adjustment=1.0`); the control probes as many
training images, as many of each class (<out>/balanced.csv).

    python benchmarks/long_tail.py --init runs/demo/pretrain/model-last.pth --out runs/long_tail   # minutes, 2 cores
    python benchmarks/long_tail.py ... --variants weights,adjusted   # some of them (results.json keeps the others)

Prints, for each choice, the epoch chosen and its held-out and test numbers; writes <out>/results.json.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from openmae.config import load_config
from openmae.data.datasets import default_root, read_idx
from openmae.engine.linprobe import LinprobeConfig, linprobe
from openmae.engine.logging import read_metrics

CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


def write_list(root: Path, out: Path, ratio: float, seed: int, even: int = 0) -> tuple[Path, dict[str, int]]:
    """<out>/images/<split>/<index>.png and <out>/long_tail.csv (path, label, split); the training rows of class c are
    a random 6000 x ratio^(-c/9) of its images (``even``: that many of each class instead, <out>/balanced.csv)."""
    rng = np.random.default_rng(seed)
    rows, kept = [], {}
    for split, stem in (("train", "train"), ("test", "t10k")):
        images = read_idx(next(root.glob(f"{stem}-images-idx3-ubyte*")))
        labels = read_idx(next(root.glob(f"{stem}-labels-idx1-ubyte*")))
        folder = out / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        for c, name in enumerate(CLASSES):
            index = np.flatnonzero(labels == c)
            if split == "train":
                count = even or round(len(index) * ratio ** (-c / (len(CLASSES) - 1)))
                index = np.sort(rng.choice(index, count, replace=False))
                kept[name] = len(index)
            for i in index:
                png = folder / f"{i:05d}.png"
                if not png.exists():
                    Image.fromarray(images[i]).save(png)
                rows.append(f"images/{split}/{i:05d}.png,{name},{split}\n")
    listed = out / ("balanced.csv" if even else "long_tail.csv")
    listed.write_text("path,label,split\n" + "".join(rows))
    return listed, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", required=True, help="the encoder to probe (e.g. the demo's model-last.pth)")
    parser.add_argument("--out", default="runs/long_tail")
    parser.add_argument("--data-root", default=str(default_root()))
    parser.add_argument("--ratio", type=float, default=100.0, help="the largest class's images over the smallest's")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default="top1,balanced_accuracy,sampling,control,weights,adjusted",
                        help="which probes to run, comma-separated (results.json keeps those of earlier runs)")
    args = parser.parse_args()
    out = Path(args.out)
    listed, kept = write_list(Path(args.data_root) / "fashion-mnist", out, args.ratio, args.seed)
    print(f"[long_tail] {listed}: training images per class {kept} ({sum(kept.values())} in all)")
    logging.getLogger("openmae.train").setLevel(logging.WARNING)
    # the control: as many training images, as many of each class
    balanced, _ = write_list(Path(args.data_root) / "fashion-mnist", out, args.ratio, args.seed,
                             even=sum(kept.values()) // len(CLASSES))
    saved = out / "results.json"
    results: dict = {**(json.loads(saved.read_text()) if saved.is_file() else {}), "kept": kept}
    # (name, images, data.balance, probe settings): chosen by top-1 or balanced accuracy; the long tail drawn
    # class-balanced; the loss's class weights; logit adjustment (tau 1); the control of as many balanced images
    variants = (("top1", listed, "none", []), ("balanced_accuracy", listed, "none", []),
                ("sampling", listed, "classes", []), ("control", balanced, "none", []),
                ("weights", listed, "none", ["linprobe.class_weights=balanced"]),
                ("adjusted", listed, "none", ["linprobe.logit_adjustment=1.0"]))
    for select_by, images, balance, remedy in variants:
        if select_by not in args.variants.split(","):
            continue
        run = out / f"select_{select_by}"
        chooser = {"top1": "top1", "control": "top1"}.get(select_by, "balanced_accuracy")
        linprobe(load_config(LinprobeConfig, overrides=[
            *remedy, "data.name=csv", f"data.path={images}", f"data.balance={balance}", "data.holdout=0.1",
            "data.report_eval_split=true",
            f"linprobe.init={args.init}", "linprobe.mode=cached", "linprobe.pooling=mean", f"linprobe.select_by={chooser}",
            f"train.epochs={args.epochs}", "train.warmup_epochs=2", "train.batch_size=256", "train.optimizer=adamw",
            "train.lr=1e-3", "train.betas=[0.9,0.999]", "train.progress=false", "train.tensorboard=false",
            "train.overwrite=true", f"train.seed={args.seed}", f"train.output_dir={run}"]))
        evals = [r for r in read_metrics(run / "metrics.jsonl") if "top1" in r]
        chosen = next(r for r in evals if r["epoch"] == evals[-1]["best_epoch"])
        keys = ("top1", "balanced_accuracy", "macro_f1", "roc_auc")
        results[select_by] = {"epoch": chosen["epoch"], "held_out": {k: chosen[k] for k in keys},
                              "test": {k: chosen[f"test_{k}"] for k in keys},
                              "last_epoch_test": {k: evals[-1][f"test_{k}"] for k in keys}}
    saved.write_text(json.dumps(results, indent=1))
    print("\nchosen by          epoch  held-out top-1  held-out balanced  test top-1 (= balanced)  test macro F1  test AUC")
    # sampling: the long tail drawn class-balanced (data.balance=classes); weights: the loss's class weights;
    # adjusted: logit adjustment; each chosen by balanced accuracy; control: as many training images with no tail,
    # chosen by top-1
    for select_by in ("top1", "balanced_accuracy", "sampling", "weights", "adjusted", "control"):
        if select_by not in results:
            continue
        r = results[select_by]
        print(f"{select_by:<18} {r['epoch']:5d}  {r['held_out']['top1']:14.2f}  {r['held_out']['balanced_accuracy']:17.2f}"
              f"  {r['test']['top1']:23.2f}  {r['test']['macro_f1']:13.2f}  {r['test']['roc_auc']:8.2f}")


if __name__ == "__main__":
    main()
