"""A decoder trained behind a frozen encoder (`pretrain.tune_blocks=0`) on Fashion-MNIST, the demo's recipe: how much
of the removed pixels a frozen encoder's features let a new decoder recover, for the demo's MAE encoder and for a
random one, beside the demo's MAE trained whole (its own decoder); and for that encoder fine-tuned on labels (a
classifier with average pooling: its final norm starts afresh), beside the MAE encoder with its final norm reset
alike. Each run: the reconstruction loss of held-out test images at every epoch (each image masked alike every time),
the median training images/s, the trained parameters, and the activations one training forward keeps for its
backward (bytes an image).

    python benchmarks/frozen_encoder.py --out runs/frozen_encoder -o docs/figures/frozen_encoder.png
    python benchmarks/frozen_encoder.py --plot-only --out runs/frozen_encoder -o docs/figures/frozen_encoder.png
    python benchmarks/frozen_encoder.py --runs frozen_mae_plain_norm,frozen_finetuned --out runs/frozen_encoder

The MAE encoder is the first run's (`whole`): an encoder-only file of it is written, as the official
mae_pretrain_vit_* files are, so that the second run's decoder starts from its initialisation, not from the trained
one. Writes <out>/results.json and a figure (-o): held-out loss by epoch, and the same six test images, masked alike,
reconstructed by each.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path

import torch

import openmae
from openmae.config import load_config
from openmae.data.datasets import default_root, stats_for
from openmae.engine.demo import MODEL, PRETRAIN
from openmae.engine.logging import read_metrics
from openmae.engine.pretrain import PretrainConfig, PretrainTask, pretrain
from openmae.engine.step_profile import kept_for_backward
from openmae.eval.reconstruction import reconstruct
from openmae.models.freezing import tune_encoder_blocks

RUNS = {"whole": "MAE trained whole (the demo)", "frozen_mae": "its encoder frozen, a new decoder",
        "frozen_random": "a random encoder frozen, a new decoder",
        "frozen_mae_plain_norm": "its encoder frozen, final norm reset, a new decoder",
        "frozen_finetuned": "its encoder fine-tuned on labels, frozen, a new decoder"}


def config(args: argparse.Namespace, out: Path, *extra: str) -> PretrainConfig:
    return load_config(PretrainConfig, overrides=[
        *MODEL, *PRETRAIN, f"data.root={args.data_root}", f"train.epochs={args.epochs}",
        f"data.max_samples={args.images}", "train.progress=false",
        "train.tensorboard=false", "train.overwrite=true", f"train.output_dir={out}", *extra])


def kept_per_image(tune_blocks: int | None, batch: int = 64) -> float:
    """Bytes of the tensors a training forward of the demo's MAE keeps for its backward, per image."""
    torch.manual_seed(0)
    model = openmae.MaskedAutoencoder(openmae.model_config("mae_vit_tiny_patch7_28_gray", depth=6))
    tune_encoder_blocks(model, tune_blocks)
    _, kept = kept_for_backward(model, lambda: model.train()(torch.randn(batch, 1, 28, 28)).loss)
    return kept / batch


def run(name: str, args: argparse.Namespace, out: Path) -> dict:
    extra: list[str] = []
    if name.startswith("frozen_mae"):  # the whole run's encoder, alone in a file (as the official encoder-only files)
        whole = torch.load(out.parent / "whole" / "model-last.pth", weights_only=True)
        mae = openmae.load_pretrained(whole)
        weights = mae.encoder_state_dict()
        if name == "frozen_mae_plain_norm":  # the fine-tuned encoder's control: its final norm as it starts there
            weights.update({k: torch.ones_like(v) if k.endswith("weight") else torch.zeros_like(v)
                            for k, v in weights.items() if k.startswith("norm.")})
        encoder = out.parent / f"{name}_encoder.pth"
        torch.save({"model": weights, "model_config": mae.cfg.to_dict(),
                    "config": whole["config"]}, encoder)  # the config: its normalisation travels with it
        extra = ["model.name=auto", f"pretrain.init={encoder}"]
    if name == "frozen_finetuned":  # a classifier fine-tuned from the whole run's encoder (average pooling)
        extra = ["model.name=auto", f"pretrain.init={args.finetuned}"]
    if name != "whole":
        extra.append("pretrain.tune_blocks=0")
    result = pretrain(config(args, out, *extra))
    rows = read_metrics(out / "metrics.jsonl")
    speeds = [r["images_per_s"] for r in rows if "images_per_s" in r]
    speeds = speeds[1:] or speeds  # past the first (the allocator's warm-up)
    curve = [(r["epoch"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    model = openmae.load_pretrained(out / "model-last.pth")
    trained = tune_encoder_blocks(model, None if name == "whole" else 0)[0]
    return {"eval_loss": result["eval_loss"], "eval_psnr": result["eval_psnr"], "curve": curve,
            "images_per_s": statistics.median(speeds), "trained_parameters": trained,
            "kept_bytes_per_image": kept_per_image(None if name == "whole" else 0)}


def plot(results: dict, args: argparse.Namespace, out: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = config(args, out / "whole")
    images = PretrainTask(cfg).picture_batch.images[:6]  # held-out test images, the pictures' own
    mean, std = stats_for(cfg.data, 1)
    shown = {name: reconstruct(openmae.load_pretrained(out / name / "model-last.pth"), images, mean, std, seed=0)
             for name in RUNS if (out / name / "model-last.pth").is_file()}
    fig = plt.figure(figsize=(12, 4.4), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[1, 1.25])
    curves = left.subplots()
    for (name, label), style in zip(RUNS.items(), ("o-", "s-", "^--", "v:", "D-"), strict=True):
        if name in results:
            epochs, losses = zip(*results[name]["curve"], strict=True)
            curves.plot(epochs, losses, style, label=f"{label}: {results[name]['eval_loss']:.4f}")
    curves.set(xlabel="epoch", ylabel="held-out loss (removed patches' MSE)",
               title="Fashion-MNIST test images, 75% removed")
    curves.set_xticks(range(1, args.epochs + 1))
    curves.grid(alpha=0.3)
    curves.legend(fontsize=8)
    first = next(iter(shown.values()))
    rows = [("original", first.original), ("masked", first.masked)] + [(RUNS[n], r.pasted) for n, r in shown.items()]
    axes = right.subplots(len(rows), first.original.shape[0], gridspec_kw={"wspace": 0.05, "hspace": 0.08})
    for (label, panel), row in zip(rows, axes, strict=True):
        for j, ax in enumerate(row):
            ax.imshow(panel[j, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(label.split(" (")[0].replace(", ", ",\n"), fontsize=7, rotation=0, ha="right", va="center")
    right.suptitle("reconstructions (visible patches pasted back)", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/frozen_encoder")
    parser.add_argument("--data-root", default=str(default_root()))
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--epochs", type=int, default=3, help="each run's (the demo's: 3)")
    parser.add_argument("--images", type=int, default=0, help="training images (0: all 60,000)")
    parser.add_argument("--finetuned", default="runs/partial_finetune/mae_6/model-best.pth",
                        help="frozen_finetuned's encoder: a classifier fine-tuned from the demo's MAE "
                             "(benchmarks/partial_finetune.py)")
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument("-o", "--figure", default="", help="write the figure there")
    args = parser.parse_args()
    out = Path(args.out)
    saved = out / "results.json"
    results: dict = json.loads(saved.read_text()) if saved.is_file() else {}
    logging.getLogger("openmae.train").setLevel(logging.WARNING)
    if not args.plot_only:
        for name in args.runs.split(","):
            results[name] = run(name, args, out / name)
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(results, indent=1))
            r = results[name]
            print(f"[frozen] {name}: held-out loss {r['eval_loss']:.4f}, {r['images_per_s']:.0f} images/s", flush=True)
    print("\nrun                    held-out loss  PSNR dB  images/s  trained parameters  KiB kept an image")
    for name, r in results.items():
        print(f"{name:<22} {r['eval_loss']:13.4f}  {r['eval_psnr']:7.2f}  {r['images_per_s']:8.0f}  "
              f"{r['trained_parameters']:18,}  {r['kept_bytes_per_image'] / 1024:8.1f}")
    if args.figure:
        plot(results, args, out, Path(args.figure))


if __name__ == "__main__":
    main()
