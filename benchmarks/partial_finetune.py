"""Partial fine-tuning (`finetune.tune_blocks`, the paper's section 4.3 and Figure 9) on Fashion-MNIST: an encoder
fine-tuned with only its last 0, 1, 2, 4 or all 6 blocks training (the rest as pretrained), beside the same from a
random initialisation, on the preset `configs/finetune/fashion_mnist.yaml` at a fixed budget. For each run: the test
top-1 of its last epoch (nothing chosen on the test images), its median training images/s, and the activations one
training forward keeps for its backward (bytes an image, counted by `torch.autograd.graph.saved_tensors_hooks`: what
a partial run saves in memory, on any device).

    python benchmarks/partial_finetune.py --init runs/demo/pretrain/model-last.pth --out runs/partial_finetune
    python benchmarks/partial_finetune.py ... --blocks 0,2 --inits mae   # some of them (results.json keeps the rest)
    python benchmarks/partial_finetune.py --plot-only --out runs/partial_finetune -o docs/figures/partial_finetune.png

Writes <out>/results.json and a figure (-o): top-1 and images/s against the blocks tuned.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path

import torch

from openmae.config import load_config
from openmae.data.datasets import default_root
from openmae.engine.finetune import FinetuneConfig, finetune
from openmae.engine.logging import read_metrics
from openmae.engine.step_profile import kept_for_backward
from openmae.models import model_config
from openmae.models.vit import create_classifier, tune_last_blocks

RANDOM = ["model.name=mae_vit_tiny_patch7_28_gray", "model.depth=6"]  # the demo's architecture, untrained


def saved_bytes_per_image(tune_blocks: int | None, batch: int = 64) -> float:
    """Bytes of the tensors a training forward of the demo's classifier keeps for its backward, per image."""
    model = create_classifier(model_config("mae_vit_tiny_patch7_28_gray", depth=6), 10, "avg", drop_path=0.1)
    tune_last_blocks(model, tune_blocks)
    _, kept = kept_for_backward(model, lambda: model.train()(torch.randn(batch, 1, 28, 28)))
    return kept / batch


def run(init: str, blocks: int | None, args: argparse.Namespace, out: Path) -> dict:
    source = [f"finetune.init={init}"] if init else RANDOM
    tune = "null" if blocks is None else str(blocks)
    result = finetune(load_config(FinetuneConfig, ["fashion_mnist"], overrides=[
        *source, f"data.root={args.data_root}", f"data.max_samples={args.images}", f"train.epochs={args.epochs}",
        f"finetune.tune_blocks={tune}", f"train.precision={args.precision}", "train.progress=false",
        "train.tensorboard=false", "train.overwrite=true", f"train.output_dir={out}", "train.ckpt_every_epochs=100",
        "train.log_every_steps=10"]))
    rows = read_metrics(out / "metrics.jsonl")
    speeds = [r["images_per_s"] for r in rows if "images_per_s" in r and "top1" not in r]
    speeds = speeds[1:] or speeds  # past the first (the compiler's and allocator's warm-up)
    return {"top1": result["top1"], "eval_loss": result["eval_loss"], "images_per_s": statistics.median(speeds),
            "saved_bytes_per_image": saved_bytes_per_image(blocks)}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc, speed) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, label, style in (("mae", "MAE encoder (the demo's)", "o-"), ("random", "random initialisation", "s--")):
        runs = sorted((int(k), v) for k, v in results.get(name, {}).items())
        if runs:
            acc.plot([b for b, _ in runs], [v["top1"] for _, v in runs], style, label=label)
            speed.plot([b for b, _ in runs], [v["images_per_s"] for _, v in runs], style, label=label)
    acc.set(xlabel="blocks fine-tuned (of 6)", ylabel="test top-1 (%)", title="Fashion-MNIST, last epoch")
    speed.set(xlabel="blocks fine-tuned (of 6)", ylabel="training images/s", title="training speed (2 CPU cores)")
    for ax in (acc, speed):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", default="runs/demo/pretrain/model-last.pth", help="the pretrained encoder")
    parser.add_argument("--out", default="runs/partial_finetune")
    parser.add_argument("--data-root", default=str(default_root()))
    parser.add_argument("--blocks", default="0,1,2,4,6", help="numbers of blocks tuned (6: all, the whole encoder)")
    parser.add_argument("--inits", default="mae,random")
    parser.add_argument("--images", type=int, default=10000, help="labelled training images (0: all 60,000)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument("-o", "--figure", default="", help="write the figure there")
    args = parser.parse_args()
    out = Path(args.out)
    saved = out / "results.json"
    results: dict = json.loads(saved.read_text()) if saved.is_file() else {}
    logging.getLogger("openmae.train").setLevel(logging.WARNING)
    if not args.plot_only:
        for name in args.inits.split(","):
            for blocks in (int(b) for b in args.blocks.split(",")):
                tune = None if blocks == 6 else blocks  # all 6: the embeddings train too (plain fine-tuning)
                r = run(args.init if name == "mae" else "", tune, args, out / f"{name}_{blocks}")
                results.setdefault(name, {})[str(blocks)] = r
                saved.write_text(json.dumps(results, indent=1))
                print(f"[partial] {name} {blocks} blocks: top-1 {r['top1']:.2f}%, {r['images_per_s']:.0f} images/s, "
                      f"{r['saved_bytes_per_image'] / 1024:.0f} KiB kept an image", flush=True)
    print("\ninit    blocks  test top-1  images/s  KiB kept for the backward, an image")
    for name in ("mae", "random"):
        for blocks, r in sorted(((int(k), v) for k, v in results.get(name, {}).items())):
            print(f"{name:<7} {blocks:6d}  {r['top1']:10.2f}  {r['images_per_s']:8.0f}  "
                  f"{r['saved_bytes_per_image'] / 1024:8.1f}")
    if args.figure:
        plot(results, Path(args.figure))


if __name__ == "__main__":
    main()
