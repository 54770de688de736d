"""Fashion-MNIST protocol: pretrain a small ViT with MAE, then kNN, cached linear probe and fine-tuning,
beside raw-pixel baselines, a random-init probe and the same ViT fine-tuned from scratch.

    python benchmarks/fashion_mnist.py --out runs/fmnist                 # the full protocol (~75 min, 2 cores)
    python benchmarks/fashion_mnist.py --out /tmp/fm --smoke             # minutes, to check the script

Writes <out>/results.json and prints a Markdown table for docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from openmae.config import load_config
from openmae.data.build import eval_batches
from openmae.data.config import DataConfig
from openmae.engine.finetune import FinetuneConfig, finetune
from openmae.engine.knn_eval import KnnConfig, knn_eval
from openmae.engine.linprobe import LinprobeConfig, linprobe
from openmae.engine.pretrain import PretrainConfig, pretrain
from openmae.eval.knn import knn_accuracy

REPO = Path(__file__).resolve().parents[1]


def pixels(root: str, split: str, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = DataConfig(name="fashion-mnist", root=root, num_workers=2)
    xs, ys = [], []
    for batch in eval_batches(data, split, (28, 28), 1, 2000, limit):
        xs.append(batch.images.flatten(1))
        ys.append(batch.labels)
    return torch.cat(xs), torch.cat(ys)


def logistic_regression(xtr, ytr, xte, yte, epochs: int = 100) -> float:
    """Multinomial logistic regression on raw pixels (Adam, mini-batches of 512, light L2)."""
    gen = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(xtr.shape[1], 10)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-3, weight_decay=1e-5)
    for _ in range(epochs):
        for idx in torch.randperm(len(xtr), generator=gen).split(512):
            loss = torch.nn.functional.cross_entropy(layer(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return 100.0 * (layer(xte).argmax(1) == yte).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/fashion_mnist_protocol")
    parser.add_argument("--data-root", default=os.environ.get("OPENMAE_DATA", str(REPO.parent / "shared" / "datasets")))
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny budgets, to check the script end to end")
    parser.add_argument("overrides", nargs="*", help="extra key=value settings for pretraining")
    args = parser.parse_args()
    out, root = Path(args.out), args.data_root
    limit = ["data.max_samples=3000", "data.max_eval_samples=1000"] if args.smoke else []
    pre_epochs, ft_epochs = (1, 1) if args.smoke else (args.pretrain_epochs, args.finetune_epochs)
    model = ["model.name=mae_vit_tiny_patch7_28_gray", "model.depth=6"]
    results: dict = {"machine": f"{platform.node()} {os.cpu_count()} cores, torch {torch.__version__}",
                     "date": time.strftime("%Y-%m-%d"), "commands": {}}
    timer = time.time()

    pre_cfg = load_config(PretrainConfig, [REPO / "configs/pretrain/fashion_mnist.yaml"], model + limit + [
        f"data.root={root}", f"train.epochs={pre_epochs}", f"train.warmup_epochs={min(2, pre_epochs)}",
        f"train.output_dir={out / 'pretrain'}", "train.progress=false", *args.overrides])
    pretrain(pre_cfg)
    ckpt = out / "pretrain" / "model-last.pth"
    results["pretrain_minutes"] = (time.time() - timer) / 60

    ev = [f"data.root={root}", "data.name=fashion-mnist", *limit]
    results["knn_mae"] = knn_eval(load_config(KnnConfig, overrides=ev + [f"knn.init={ckpt}", "knn.pooling=mean"]))["knn_top1"]
    results["knn_mae_cls"] = knn_eval(load_config(KnnConfig, overrides=ev + [f"knn.init={ckpt}", "knn.pooling=cls"]))["knn_top1"]
    results["knn_random"] = knn_eval(load_config(KnnConfig, overrides=ev + model + ["knn.pooling=mean"]))["knn_top1"]
    probe = [REPO / "configs/linprobe/small_cached.yaml"]
    quiet = ["train.progress=false", "train.tensorboard=false"]
    results["probe_mae"] = linprobe(load_config(LinprobeConfig, probe, ev + quiet + [
        f"linprobe.init={ckpt}", f"train.output_dir={out / 'probe_mae'}"]))["best_top1"]
    results["probe_random"] = linprobe(load_config(LinprobeConfig, probe, ev + quiet + model + [
        f"train.output_dir={out / 'probe_random'}"]))["best_top1"]
    ft = [REPO / "configs/finetune/fashion_mnist.yaml"]
    ft_common = ev + quiet + [f"train.epochs={ft_epochs}", f"train.warmup_epochs={min(1, ft_epochs)}"]
    results["finetune_mae"] = finetune(load_config(FinetuneConfig, ft, ft_common + [
        f"finetune.init={ckpt}", f"train.output_dir={out / 'finetune_mae'}"]))["best_top1"]
    results["finetune_scratch"] = finetune(load_config(FinetuneConfig, ft, ft_common + model + [
        f"train.output_dir={out / 'finetune_scratch'}"]))["best_top1"]
    n_train, n_test = (3000, 1000) if args.smoke else (0, 0)
    xtr, ytr = pixels(root, "train", n_train)
    xte, yte = pixels(root, "test", n_test)
    results["knn_pixels"] = knn_accuracy(xtr, ytr, xte, yte, 10)["knn_top1"]
    results["logreg_pixels"] = logistic_regression(xtr, ytr, xte, yte, 5 if args.smoke else 100)
    results["total_minutes"] = (time.time() - timer) / 60
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
