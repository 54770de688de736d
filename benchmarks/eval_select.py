"""Choose the kNN and linear-probe settings of a pretrained encoder on held-out training images, then measure the
chosen settings once on the test split. Raw pixels get the same kNN search, so the baseline is tuned as hard.

    python benchmarks/eval_select.py --init runs/fm_gpu50/pretrain/model-last.pth --out runs/fm_select
    python benchmarks/eval_select.py --init runs/fm_gpu50/pretrain/model-last.pth --out runs/fm_select \
        --finetune-select-epochs 5 --finetune-epochs 30 --precision bf16              # and a fine-tuning recipe
    python benchmarks/eval_select.py ... --finetune-select-epochs 10 --finetune-recipes crop1.0,erase0.25 ...
    python benchmarks/eval_select.py --init <checkpoint> --out /tmp/sel --smoke      # minutes, to check the script

The held-out part (``--holdout``, a fraction of the training split, ``data.holdout``) stands in for the test
split while settings are compared; the test split is read only for the chosen settings. kNN settings: pooling
(cls, mean, cls+mean) x last blocks x per-dimension standardisation x k x temperature, all from one feature
extraction; probe settings: pooling x schedule, each a cached probe run of `openmae linprobe` on the held-out
split, compared at their last epoch (no best-epoch picking). With ``--finetune-select-epochs N``, fine-tuning
recipes (``--finetune-recipes``: crop scale, colour jitter, random erasing, mixup, weight EMA, a 2-pixel shift,
RandAugment) are compared the same way, at their last held-out epoch, and the chosen one fine-tunes
``--finetune-epochs`` on the full training split, reported at its last epoch (accuracy per epoch of every run:
<out>/finetune_curves_<N>ep.png). Writes <out>/results.json step by step; a step already there (same key: epochs
and recipe in its name) is not rerun.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from protocol import DEFAULT_ROOT, REPO, Protocol

from openmae.data.build import eval_batches, split_sources
from openmae.data.config import DataConfig
from openmae.engine.config import ModelSection
from openmae.engine.distributed import pick_device
from openmae.engine.knn_eval import load_encoder_model
from openmae.engine.logging import read_metrics
from openmae.eval.features import extract_features
from openmae.eval.knn import knn_accuracy, knn_accuracy_grid, standardize
from openmae.eval.plots import epoch_curves

KS = (10, 20, 50)
TEMPERATURES = (0.02, 0.07, 0.2)
POOLINGS = ("cls", "mean", "cls+mean")
PROBE_POOLINGS = ("mean", "cls+mean")
# Fine-tuning recipes, on top of configs/finetune/fashion_mnist.yaml (flip, drop path 0.1, label smoothing 0.1,
# layer decay 0.75, blr 2e-3): how hard to augment 28px garments (crop scale, brightness/contrast jitter).
# The crop recipes were compared first (5 epochs); the regularisers, for longer schedules, start from the winner.
NO_CROP = ["data.crop_scale=[1.0,1.0]", "finetune.color_jitter=0"]
FINETUNE_RECIPES = {
    "crop0.5_jitter0.4": ["data.crop_scale=[0.5,1.0]", "finetune.color_jitter=0.4"],
    "crop0.5": ["data.crop_scale=[0.5,1.0]", "finetune.color_jitter=0"],
    "crop0.8": ["data.crop_scale=[0.8,1.0]", "finetune.color_jitter=0"],
    "crop1.0": NO_CROP,
    "erase0.25": [*NO_CROP, "finetune.reprob=0.25"],
    "mixup0.8_cutmix1.0": [*NO_CROP, "finetune.mixup=0.8", "finetune.cutmix=1.0"],
    "ema0.999": [*NO_CROP, "finetune.model_ema=true", "finetune.model_ema_decay=0.999"],
    "shift2": [*NO_CROP, "finetune.shift=2"],
    "randaug_m9": [*NO_CROP, "finetune.auto_augment=rand-m9-mstd0.5-inc1"],
    "drop_path0": [*NO_CROP, "finetune.drop_path=0"],
    "batch64": [*NO_CROP, "train.batch_size=64"],  # blr unchanged: lr scales with the batch (5e-4)
}
CROP_RECIPES = ("crop0.5_jitter0.4", "crop0.5", "crop0.8", "crop1.0")
PROBE_SCHEDULES = {  # on top of configs/linprobe/small_cached.yaml (AdamW, batch 256, 2 warm-up epochs, cosine)
    "30ep_lr1e-3": ["train.epochs=30", "train.lr=1e-3"],
    "100ep_lr3e-3": ["train.epochs=100", "train.lr=3e-3"],
    "200ep_lr3e-3": ["train.epochs=200", "train.lr=3e-3"],
}


def last_blocks_of(feats: torch.Tensor, pooling: str, n: int, depth: int, width: int) -> torch.Tensor:
    """From ``cls+mean`` features of all ``depth`` blocks, (N, 2 * depth * width) laid out as [cls tokens of
    every block | patch means of every block], the features ``pooling`` gives for the last ``n`` blocks (the
    layout `extract_features(..., pooling, last_blocks=n)` produces)."""
    cls, mean = feats[:, : depth * width], feats[:, depth * width :]
    last = slice((depth - n) * width, depth * width)
    return torch.cat({"cls": [cls[:, last]], "mean": [mean[:, last]], "cls+mean": [cls[:, last], mean[:, last]]}[pooling], 1)


def search(rows: list, name: str, train, val, num_classes: int, device: torch.device, **setting) -> None:
    """kNN of ``val`` against ``train`` for every (k, temperature), raw and standardised, searched on ``device`` when
    the features fit there; appends result rows."""
    for std in (False, True):
        tr, va = standardize(train[0], val[0]) if std else (train[0], val[0])
        for (k, t), acc in knn_accuracy_grid(tr, train[1], va, val[1], num_classes, KS, TEMPERATURES,
                                                 device=device).items():
            rows.append({"features": name, **setting, "standardize": std, "k": k, "temperature": t, "holdout_top1": acc})
    best = max((r for r in rows if r["features"] == name and all(r[a] == b for a, b in setting.items())),
               key=lambda r: r["holdout_top1"])
    print(f"{name} {setting}: best {best['holdout_top1']:.2f} (standardize {best['standardize']}, k {best['k']}, "
          f"T {best['temperature']})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", required=True, help="pretrained checkpoint (openmae, official or timm layout)")
    parser.add_argument("--out", default="runs/eval_select")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-root", default=DEFAULT_ROOT)
    parser.add_argument("--holdout", type=float, default=1 / 6, help="fraction of the training split held out")
    parser.add_argument("--finetune-select-epochs", type=int, default=0,
                        help="also choose a fine-tuning recipe: each candidate fine-tunes this many epochs on the "
                             "held-out split (0: no fine-tuning)")
    parser.add_argument("--finetune-epochs", type=int, default=0,
                        help="epochs of the chosen recipe's one run on the full training split, tested once")
    parser.add_argument("--finetune-recipes", default=",".join(CROP_RECIPES),
                        help=f"comma-separated candidates, of: {', '.join(FINETUNE_RECIPES)}")
    parser.add_argument("--precision", default="auto", help="train.precision of the fine-tuning runs")
    parser.add_argument("--smoke", action="store_true", help="small subsets and one short probe schedule")
    args = parser.parse_args()
    names = args.finetune_recipes.split(",")
    if unknown := [name for name in names if name not in FINETUNE_RECIPES]:
        parser.error(f"--finetune-recipes: unknown {unknown}; known: {', '.join(FINETUNE_RECIPES)}")

    limit = ["data.max_samples=3000", "data.max_eval_samples=1000"] if args.smoke else []
    p = Protocol(args.dataset, args.data_root, Path(args.out), [], REPO / "configs/pretrain/fashion_mnist.yaml",
                 REPO / "configs/finetune/fashion_mnist.yaml", limit=limit, reported_epoch="last")
    holdout = [f"data.holdout={args.holdout}"]
    ckpt = Path(args.init)
    device = pick_device("auto")
    n_train, n_eval = (3000, 1000) if args.smoke else (0, 0)
    held = DataConfig(name=args.dataset, root=args.data_root, holdout=args.holdout, num_workers=2,
                      max_samples=n_train, max_eval_samples=n_eval)
    # the normalisation the checkpoint records, as the commands take it
    encoder, m = load_encoder_model(ModelSection(name="auto"), str(ckpt), data=held)
    encoder = encoder.to(device)
    depth, width = m.depth, m.embed_dim
    blocks = sorted({1, 2, 3, depth // 2, depth} & set(range(1, depth + 1)))

    def features():  # float32 on the CPU, cls+mean of every block, of the training and held-out images
        return [extract_features(encoder, eval_batches(held, split, m.img_size, m.in_chans, 500, source=source),
                                 device, "cls+mean", last_blocks=depth)
                for split, source in zip((held.train_split, held.eval_split), split_sources(held, m.in_chans), strict=True)]

    if "knn_search" not in p.results:
        rows: list = []
        train, val = features()
        num_classes = int(train[1].max()) + 1
        for pooling in POOLINGS:
            for n in blocks:
                search(rows, "encoder", (last_blocks_of(train[0], pooling, n, depth, width), train[1]),
                       (last_blocks_of(val[0], pooling, n, depth, width), val[1]), num_classes, device,
                       pooling=pooling, last_blocks=n)
        search(rows, "pixels", *p.pixels(m.img_size, m.in_chans, (n_train, n_eval), args.holdout), num_classes, device)
        p.results["knn_search"] = rows
        p.save()
    rows = p.results["knn_search"]
    best = max((r for r in rows if r["features"] == "encoder"), key=lambda r: r["holdout_top1"])
    best_pix = max((r for r in rows if r["features"] == "pixels"), key=lambda r: r["holdout_top1"])
    p.results["knn_chosen"], p.results["knn_pixels_chosen"] = best, best_pix
    p.knn("knn_selected_test", ckpt, best["pooling"], best["last_blocks"],
          [f"knn.k={best['k']}", f"knn.temperature={best['temperature']}", f"knn.standardize={best['standardize']}"])

    def pixel_knn() -> float:
        train, test = p.pixels(m.img_size, m.in_chans, (n_train, n_eval))
        tr, te = standardize(train[0], test[0]) if best_pix["standardize"] else (train[0], test[0])
        return knn_accuracy(tr, train[1], te, test[1], int(train[1].max()) + 1, best_pix["k"],
                            best_pix["temperature"], device=device)["knn_top1"]

    p.step("knn_pixels_selected_test", pixel_knn)

    schedules = {"3ep_lr1e-3": ["train.epochs=3", "train.warmup_epochs=1", "train.lr=1e-3"]} if args.smoke \
        else PROBE_SCHEDULES
    probes = {(pooling, name): p.probe(f"probe_holdout_{pooling}_{name}", ckpt, pooling, depth, [*holdout, *sched])
              for pooling in PROBE_POOLINGS for name, sched in schedules.items()}
    pooling, name = max(probes, key=probes.get)
    p.results["probe_chosen"] = {"pooling": pooling, "last_blocks": depth, "schedule": name}
    p.probe("probe_selected_test", ckpt, pooling, depth, schedules[name])
    p.save()

    if args.finetune_select_epochs:
        tune, n = [f"train.precision={args.precision}"], args.finetune_select_epochs
        scores = {name: p.finetune(f"finetune_holdout{n}_{name}", ckpt, n, [*holdout, *tune, *FINETUNE_RECIPES[name]])
                  for name in names}
        name = max(scores, key=scores.get)
        p.results["finetune_chosen"] = {"recipe": name, "overrides": FINETUNE_RECIPES[name], "select_epochs": n,
                                        "candidates": scores}
        p.save()
        runs = {f"{recipe}, held-out": f"finetune_holdout{n}_{recipe}" for recipe in names}
        if args.finetune_epochs:  # the last epoch's accuracy: no epoch is picked on the test split either
            final = f"finetune_selected_test_{args.finetune_epochs}ep_{name}"
            p.finetune(final, ckpt, args.finetune_epochs, [*tune, *FINETUNE_RECIPES[name]])
            runs[f"{name}, test split"] = final
        epoch_curves({label: read_metrics(p.out / key / "metrics.jsonl") for label, key in runs.items()},
                     p.out / f"finetune_curves_{n}ep.png", "fine-tuning recipes: held-out images, then the test split")

if __name__ == "__main__":
    main()
