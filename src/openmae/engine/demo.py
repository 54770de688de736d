"""``openmae demo`` / ``make demo``: pretrain a small MAE on Fashion-MNIST for a few minutes, then compare its
encoder with random-init and raw-pixel baselines, and point at the pictures it wrote."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from openmae.config import load_config
from openmae.data.build import eval_batches
from openmae.data.config import DataConfig
from openmae.engine.knn_eval import KnnConfig, knn_eval
from openmae.engine.linprobe import LinprobeConfig, linprobe
from openmae.engine.preempt import exit_code
from openmae.engine.pretrain import PretrainConfig, pretrain
from openmae.eval.knn import knn_accuracy

MODEL = ["model.name=mae_vit_tiny_patch7_28_gray", "model.depth=6"]
# about 7 minutes of pretraining on 2 CPU cores (~450 images/s)
PRETRAIN = ["data.name=fashion-mnist", "train.epochs=3", "train.warmup_epochs=1", "train.batch_size=256",
            "train.blr=1.5e-3", "train.log_every_steps=20", "pretrain.vis_images=8", "train.ckpt_every_epochs=1",
            # the reconstruction loss of test images it does not train on, every epoch
            "pretrain.eval_every_epochs=1", "pretrain.eval_samples=2000"]
EVAL_TRAIN, EVAL_TEST = 10000, 10000


def raw_pixel_knn(data: DataConfig, train_n: int, test_n: int) -> float:
    """kNN on normalised raw pixels with the same protocol (the baseline the encoder must beat)."""
    def pixels(split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for batch in eval_batches(data, split, (28, 28), 1, 1000, n):
            xs.append(batch.images.flatten(1))
            ys.append(batch.labels)
        return torch.cat(xs), torch.cat(ys)

    (xtr, ytr), (xte, yte) = pixels("train", train_n), pixels("test", test_n)
    return knn_accuracy(xtr, ytr, xte, yte, 10)["knn_top1"]


def run_demo(data_root: str | None, output: str, overrides: list[str], minutes: float = 7.0) -> int:
    start = time.time()
    out = Path(output)
    root = [f"data.root={data_root}"] if data_root else []
    # the demo's own folders: a demo run again starts over in them
    cfg = load_config(PretrainConfig, overrides=MODEL + PRETRAIN + root + [f"train.output_dir={out / 'pretrain'}",
                                                                            "train.overwrite=true", *overrides])
    print(f"[demo] pretraining {cfg.model.name} (depth {cfg.model.depth}) on Fashion-MNIST for {cfg.train.epochs} "
          f"epochs (~{minutes:.0f} min on 2 CPU cores)")
    pretrained = pretrain(cfg)
    stopped = pretrained.get("stopped_by")
    if stopped:
        print(f"[demo] pretraining stopped by {stopped}; its checkpoint is in {out / 'pretrain'}, no evaluation run")
        return exit_code({"stopped_by": stopped})
    ckpt = out / "pretrain" / "model-last.pth"
    common = root + ["data.name=fashion-mnist", f"data.max_samples={EVAL_TRAIN}", f"data.max_eval_samples={EVAL_TEST}"]
    results: dict[str, Any] = {}
    print("[demo] kNN (k=20, T=0.07) and cached linear probe on the test split")
    results["knn_mae"] = knn_eval(load_config(KnnConfig, overrides=common + [f"knn.init={ckpt}", "knn.pooling=mean"]))
    results["knn_random"] = knn_eval(load_config(KnnConfig, overrides=common + MODEL + ["knn.pooling=mean"]))
    results["knn_pixels"] = {"knn_top1": raw_pixel_knn(cfg.data, EVAL_TRAIN, EVAL_TEST)}
    # the paper's LARS recipe assumes ~7,000 steps at batch 16,384; for a 1-minute probe on cached features
    # plain AdamW (multinomial logistic regression on BatchNorm-ed features) converges far faster
    probe = common + ["linprobe.mode=cached", "linprobe.pooling=mean", "train.epochs=20", "train.warmup_epochs=2",
                      "train.batch_size=256", "train.optimizer=adamw", "train.lr=1e-3", "train.betas=[0.9,0.999]",
                      "train.progress=false", "train.tensorboard=false", "train.overwrite=true"]
    training_log = logging.getLogger("openmae.train")
    level = training_log.level
    training_log.setLevel(logging.WARNING)  # the probes' 800 steps each: their results below say enough
    try:
        results["probe_mae"] = linprobe(load_config(LinprobeConfig, overrides=probe + [
            f"linprobe.init={ckpt}", f"train.output_dir={out / 'linprobe'}"]))
        results["probe_random"] = linprobe(load_config(LinprobeConfig, overrides=probe + MODEL + [
            f"train.output_dir={out / 'linprobe_random'}"]))
    finally:
        training_log.setLevel(level)
    rows = [("kNN, MAE encoder", results["knn_mae"]["knn_top1"]),
            ("kNN, random-init encoder", results["knn_random"]["knn_top1"]),
            ("kNN, raw pixels", results["knn_pixels"]["knn_top1"]),
            # the last epoch: the best one would be chosen on the test split printed here
            ("linear probe (cached), MAE encoder", results["probe_mae"]["top1"]),
            ("linear probe (cached), random-init encoder", results["probe_random"]["top1"])]
    print(f"\n[demo] Fashion-MNIST test accuracy ({EVAL_TEST} test images, {EVAL_TRAIN} training images for kNN/probe)")
    for name, value in rows:
        print(f"  {name:<45} {value:6.2f}%")
    if "eval_loss" in pretrained:
        print(f"\n[demo] reconstruction of {cfg.pretrain.eval_samples} test images (75% of each removed): loss "
              f"{pretrained['eval_loss']:.4f} (training loss {pretrained['loss']:.4f}), PSNR "
              f"{pretrained['eval_psnr']:.2f} dB")
    pictures = sorted((out / "pretrain" / "pictures").glob("*.png"))
    print(f"\n[demo] reconstructions of test images: {pictures[-1] if pictures else '-'}")
    print(f"[demo] loss curve: {out / 'pretrain' / 'loss_curve.png'}")
    print(f"[demo] more pictures: openmae visualize --checkpoint {ckpt} data.name=fashion-mnist"
          f"{f' data.root={data_root}' if data_root else ''} --errors (error maps; --features: feature maps)")
    print(f"[demo] total time {(time.time() - start) / 60:.1f} min")
    (out / "demo_results.json").write_text(json.dumps({k: {kk: vv for kk, vv in v.items() if isinstance(vv, (int, float, str))}
                                                       for k, v in results.items()}, indent=2))
    return 0
