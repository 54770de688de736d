"""Several classes an image, from a CSV list (`data.multi_label=true`): Fashion-MNIST mosaics. Each image is a 2 x 2
grid of 14 x 14 tiles; 1 to 4 of its tiles (as many as drawn, uniformly) hold a Fashion-MNIST photo (halved),
the others stay black; its labels are the classes of its photos (`coat|sneaker`). The mosaics are written as PNG
files, listed in one CSV file with a split column (training mosaics from the training photos, test mosaics from the
test photos). Three encoders of one architecture (the demo's ViT-T, patch 7, depth 6): the demo's (pretrained on
whole Fashion-MNIST photos), one pretrained with MAE on the training mosaics themselves (their labels unread), and a
random-init one; each measured by kNN, by a cached linear probe trained with binary cross-entropy (mean pooling, the
demo's probe recipe) and by fine-tuning (the fashion_mnist recipe, binary cross-entropy), beside the constant
predictor (each class's training frequency: its AP is the class's share of the test images).

    python benchmarks/multi_label.py --init runs/demo/pretrain/model-last.pth --out runs/multi_label   # ~25 min, 2 cores

Prints mean AP, ROC-AUC, micro / macro F1 and exact match of each; writes <out>/results.json. With ``--holdout
0.1`` the probes and fine-tuning choose on a tenth of the training mosaics held out, fit each class's decision
threshold there, and measure the test mosaics at one half and at those thresholds (``tuned_*``); writes
<out>/results_holdout.json (the mosaic MAE of an earlier run in <out> is reused).
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
from openmae.engine.finetune import finetune
from openmae.engine.knn_eval import knn_eval
from openmae.engine.linprobe import linprobe
from openmae.engine.logging import read_metrics
from openmae.engine.pretrain import pretrain
from openmae.engine.task_config import FinetuneConfig, KnnConfig, LinprobeConfig, PretrainConfig
from openmae.eval.multilabel import multilabel_scores

CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
MEASURES = ("mean_ap", "roc_auc", "micro_f1", "macro_f1", "exact_match")


def write_mosaics(root: Path, out: Path, counts: dict[str, int], seed: int) -> tuple[Path, dict[str, np.ndarray]]:
    """<out>/mosaics/<split>/<n>.png and <out>/mosaics.csv (path, labels, split); returns the list and each split's
    rows of 0 / 1 (mosaics, classes)."""
    rng = np.random.default_rng(seed)
    rows, truth = [], {}
    for split, stem in (("train", "train"), ("test", "t10k")):
        photos = read_idx(next(root.glob(f"{stem}-images-idx3-ubyte*")))  # (N, 28, 28) uint8
        labels = read_idx(next(root.glob(f"{stem}-labels-idx1-ubyte*")))
        halves = photos.reshape(-1, 14, 2, 14, 2).mean((2, 4)).round().astype(np.uint8)  # (N, 14, 14): 2 x 2 means
        folder = out / "mosaics" / split
        folder.mkdir(parents=True, exist_ok=True)
        hot = np.zeros((counts[split], len(CLASSES)), dtype=np.float32)
        for n in range(counts[split]):
            shown = rng.integers(1, 5)  # photos in this mosaic
            tiles, picked = rng.permutation(4)[:shown], rng.integers(0, len(photos), shown)
            canvas = np.zeros((28, 28), dtype=np.uint8)
            for tile, i in zip(tiles, picked):
                y, x = divmod(int(tile), 2)
                canvas[14 * y : 14 * y + 14, 14 * x : 14 * x + 14] = halves[i]
                hot[n, labels[i]] = 1.0
            png = folder / f"{n:05d}.png"
            Image.fromarray(canvas).save(png)
            names = "|".join(CLASSES[c] for c in np.flatnonzero(hot[n]))
            rows.append(f"mosaics/{split}/{n:05d}.png,{names},{split}\n")
        truth[split] = hot
    listed = out / "mosaics.csv"
    listed.write_text("path,labels,split\n" + "".join(rows))
    return listed, truth


TUNED = ("micro_f1", "macro_f1", "exact_match")


def last_evaluation(run: Path, held_out: bool = False) -> dict[str, float]:
    """The last epoch's test measures (with ``held_out``: the test split's, and at the thresholds fitted on the
    held-out mosaics, ``tuned_*``)."""
    last = [r for r in read_metrics(run / "metrics.jsonl") if "mean_ap" in r][-1]
    if not held_out:
        return {k: last[k] for k in MEASURES}
    return {**{k: last[f"test_{k}"] for k in MEASURES}, **{f"tuned_{k}": last[f"test_tuned_{k}"] for k in TUNED}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", required=True, help="the encoder to measure (e.g. the demo's model-last.pth)")
    parser.add_argument("--out", default="runs/multi_label")
    parser.add_argument("--data-root", default=str(default_root()))
    parser.add_argument("--train", type=int, default=20000, help="training mosaics")
    parser.add_argument("--test", type=int, default=4000, help="test mosaics")
    parser.add_argument("--epochs", type=int, default=20, help="the probes' epochs")
    parser.add_argument("--pretrain-epochs", type=int, default=8, help="MAE on the training mosaics")
    parser.add_argument("--finetune-epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--holdout", type=float, default=0.0, help="choose on this share of the training mosaics, "
                        "fit the decision thresholds there, measure the test mosaics at them too")
    args = parser.parse_args()
    held_out = args.holdout > 0
    chosen = [f"data.holdout={args.holdout}", "data.report_eval_split=true"] if held_out else []
    out = Path(args.out)
    listed, truth = write_mosaics(Path(args.data_root) / "fashion-mnist", out, {"train": args.train, "test": args.test},
                                  args.seed)
    per_image = truth["test"].sum(1)
    print(f"[multi_label] {listed}: {args.train} training and {args.test} test mosaics, {per_image.mean():.2f} classes "
          f"a test mosaic (1-{int(per_image.max())}), each class in {100 * truth['test'].mean():.1f}% of them")
    logging.getLogger("openmae.train").setLevel(logging.WARNING)
    data = ["data.name=csv", f"data.path={listed}", "data.multi_label=true"]
    arch = ["model.name=mae_vit_tiny_patch7_28_gray", "model.depth=6"]  # the demo's, for the random-init encoder
    prior = np.broadcast_to(truth["train"].mean(0), truth["test"].shape)  # each class's frequency in training
    results: dict = {"prior": {k: multilabel_scores(np.ascontiguousarray(prior), truth["test"])[k] for k in MEASURES},
                     "classes_per_mosaic": float(per_image.mean()), "train": args.train, "test": args.test}
    # MAE on the training mosaics (the demo's pretraining recipe, more epochs for a third of the images)
    mosaic_mae = out / "pretrain" / "model-last.pth"
    if held_out and mosaic_mae.is_file():
        print(f"[multi_label] reusing {mosaic_mae}")
    else:
        pretrain(load_config(PretrainConfig, overrides=[
            *arch, "data.name=csv", f"data.path={listed}", f"train.epochs={args.pretrain_epochs}",
            "train.warmup_epochs=1", "train.batch_size=256", "train.blr=1.5e-3", "train.progress=false",
            "train.tensorboard=false", "train.overwrite=true", "pretrain.vis_images=8", f"train.seed={args.seed}",
            f"train.output_dir={out / 'pretrain'}"]))
    written = out / ("results_holdout.json" if held_out else "results.json")
    encoders = {"demo": args.init, "mosaics": str(mosaic_mae), "random": ""}
    for name, init in encoders.items():
        if not held_out:
            knn = knn_eval(load_config(KnnConfig, overrides=[*data, *(arch if not init else [f"knn.init={init}"]),
                                                             "knn.pooling=mean", "knn.k=20"]))
            results[f"knn_{name}"] = {k: knn[f"knn_{k}"] for k in MEASURES}
        run = out / f"probe_{name}{'_holdout' * held_out}"
        linprobe(load_config(LinprobeConfig, overrides=[
            *data, *chosen, *(arch if not init else [f"linprobe.init={init}"]), "linprobe.mode=cached", "linprobe.pooling=mean",
            f"train.epochs={args.epochs}", "train.warmup_epochs=2", "train.batch_size=256", "train.optimizer=adamw",
            "train.lr=1e-3", "train.betas=[0.9,0.999]", "train.progress=false", "train.tensorboard=false",
            "train.overwrite=true", f"train.seed={args.seed}", f"train.output_dir={run}"]))
        results[f"probe_{name}"] = last_evaluation(run, held_out)
        run = out / f"finetune_{name}{'_holdout' * held_out}"
        finetune(load_config(FinetuneConfig, overrides=[
            *data, *chosen, *(arch if not init else [f"finetune.init={init}"]), "data.crop_scale=[1.0,1.0]",
            f"train.epochs={args.finetune_epochs}", "train.warmup_epochs=1", "train.batch_size=128", "train.blr=2e-3",
            "train.betas=[0.9,0.999]", "finetune.mixup=0", "finetune.cutmix=0", "finetune.auto_augment=",
            "finetune.reprob=0", "finetune.smoothing=0.1", "train.progress=false", "train.tensorboard=false",
            "train.overwrite=true", f"train.seed={args.seed}", f"train.output_dir={run}"]))
        results[f"finetune_{name}"] = last_evaluation(run, held_out)
        written.write_text(json.dumps(results, indent=1))
    print("\n(test mosaics, last epoch)       mean AP  ROC-AUC  micro F1  macro F1  exact match" +
          "  | at fitted thresholds: micro F1  macro F1  exact match" * held_out)
    for key in ("prior", *(f"{how}_{name}" for how in ("probe", "finetune", *["knn"] * (not held_out))
                           for name in encoders)):
        r = results[key]
        tuned = (f"  | {r['tuned_micro_f1']:30.2f}  {r['tuned_macro_f1']:8.2f}  {r['tuned_exact_match']:11.2f}"
                 if "tuned_micro_f1" in r else "")
        print(f"{key:<32} {r['mean_ap']:7.2f}  {r['roc_auc']:7.2f}  {r['micro_f1']:8.2f}  {r['macro_f1']:8.2f}  "
              f"{r['exact_match']:11.2f}{tuned}")


if __name__ == "__main__":
    main()
