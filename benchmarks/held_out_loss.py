"""The held-out reconstruction loss (`pretrain.eval_every_epochs`) on real images: four MAE pretraining runs of the
Fashion-MNIST recipe (ViT-T, patch 7) on 128, 1,000, 6,000 and 60,000 training photos, each for about the same
number of optimizer steps (batch 128, a tenth of the epochs warming up; the 128 photos repeated 10 times an epoch),
each measuring the loss and PSNR of the removed patches of 2,000 test photos (never trained on) at regular epochs.
Where the training set is small enough the held-out loss stops falling, or rises, while the training loss goes on
falling: the model memorises its photos, which the training loss alone does not show. The final encoders' kNN
accuracy (10,000 training photos, the same 2,000 test photos) says whether the held-out loss ranks the encoders as
their features do.

    python benchmarks/held_out_loss.py --out runs/held_out_loss   # ~30 min, 2 cores (--sizes 128 1000: some)

Prints each run's last training and held-out losses, PSNR and kNN top-1; writes <out>/results.json and
<out>/held_out_loss.png (training and held-out loss against optimizer step).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from openmae.config import load_config  # noqa: E402
from openmae.data.datasets import default_root  # noqa: E402
from openmae.engine.evaluate import run_evaluate  # noqa: E402
from openmae.engine.knn_eval import knn_eval  # noqa: E402
from openmae.engine.logging import read_metrics  # noqa: E402
from openmae.engine.pretrain import pretrain  # noqa: E402
from openmae.engine.task_config import EvaluateConfig, KnnConfig, PretrainConfig  # noqa: E402

# training photos -> (epochs, measured every that many epochs, data.repeat): about 1,400 steps of 128 each
RUNS = {128: (140, 10, 10), 1000: (200, 10, 1), 6000: (30, 2, 1), 60000: (3, 1, 1)}
EVAL_IMAGES = 2000


def run(images: int, out: Path, root: Path) -> dict:
    epochs, every, repeat = RUNS[images]
    folder = out / f"train{images}"
    result = pretrain(load_config(PretrainConfig, ["fashion_mnist"], [
        f"data.root={root}", f"data.max_samples={images}", f"train.epochs={epochs}",
        f"train.warmup_epochs={epochs / 10}", "train.batch_size=128", "train.log_every_steps=7",
        "train.progress=false", "train.tensorboard=false", "train.ckpt_every_epochs=1000", "pretrain.vis_every_epochs=0",
        f"pretrain.eval_every_epochs={every}", f"pretrain.eval_samples={EVAL_IMAGES}", f"train.output_dir={folder}",
        f"data.repeat={repeat}", "train.overwrite=true"]))
    knn = knn_eval(load_config(KnnConfig, overrides=[
        f"knn.init={folder / 'model-last.pth'}", "data.name=fashion-mnist", f"data.root={root}",
        "data.max_samples=10000", f"data.max_eval_samples={EVAL_IMAGES}", "knn.pooling=mean"]))
    records = read_metrics(folder / "metrics.jsonl")
    return {"images": images, "epochs": epochs, "steps": result["step"],
            "train": [(r["step"], r["loss"]) for r in records if "loss" in r],
            "held_out": [(r["step"], r["epoch"], r["eval_loss"], r["eval_psnr"]) for r in records if "eval_loss" in r],
            "knn_top1": knn["knn_top1"]}


def own_photos(images: int, out: Path, root: Path) -> dict:
    """The final model's loss and PSNR on (up to 2,000 of) its own training photos, seen as the held-out ones are
    (whole, no crop or flip; each masked by its place): against the held-out loss, what memorising them gained."""
    measured = run_evaluate(load_config(EvaluateConfig, overrides=[
        f"evaluate.init={out / f'train{images}' / 'model-last.pth'}", "data.name=fashion-mnist", f"data.root={root}",
        "data.eval_split=train", f"data.max_eval_samples={min(images, EVAL_IMAGES)}"]))
    return {"loss": measured["loss"], "psnr": measured["psnr"], "images": measured["samples"]}


def plot(results: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=130)
    for r, colour in zip(results, ("tab:purple", "tab:red", "tab:orange", "tab:blue")):
        steps, losses = zip(*r["train"])
        ax.plot(steps, losses, color=colour, lw=0.8, alpha=0.45)
        held = r["held_out"]
        ax.plot([h[0] for h in held], [h[2] for h in held], color=colour, marker="o", ms=3, lw=1.6,
                label=f"{r['images']:,} photos: held-out (kNN {r['knn_top1']:.1f}%)")
        if "own_photos" in r:  # at the end: its own training photos, seen as the held-out ones are
            ax.plot([r["steps"]], [r["own_photos"]["loss"]], color=colour, marker="x", ms=8, mew=2, ls="none")
    ax.set_xlabel("optimizer step (batch 128)")
    ax.set_ylabel("loss of the removed patches")
    ax.set_ylim(top=min(1.0, ax.get_ylim()[1]))
    ax.set_title("MAE on Fashion-MNIST: training loss (thin), held-out loss (dots),\nits own training photos seen "
                 "whole at the end (x)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/held_out_loss")
    parser.add_argument("--data-root", default=str(default_root()))
    parser.add_argument("--sizes", type=int, nargs="*", default=list(RUNS), choices=list(RUNS),
                        help="which runs (those of an earlier call in --out are kept; their own-photo losses measured "
                             "where missing)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    earlier = out / "results.json"
    kept = {r["images"]: r for r in json.loads(earlier.read_text())} if earlier.is_file() else {}
    for images, r in kept.items():
        if "own_photos" not in r and images not in args.sizes:
            r["own_photos"] = own_photos(images, out, Path(args.data_root))
    for images in args.sizes:
        r = kept[images] = run(images, out, Path(args.data_root))
        r["own_photos"] = own_photos(images, out, Path(args.data_root))
        last = r["held_out"][-1]
        tail = [loss for _, loss in r["train"][-10:]]
        print(f"{images:>6} photos, {r['epochs']} epochs, {r['steps']} steps: training loss (last 10 logged, mean) "
              f"{sum(tail) / len(tail):.4f}, held-out loss {last[2]:.4f}, PSNR {last[3]:.2f} dB, best held-out "
              f"{min(h[2] for h in r['held_out']):.4f} at epoch {min(r['held_out'], key=lambda h: h[2])[1]}, "
              f"kNN top-1 {r['knn_top1']:.2f}; on {r['own_photos']['images']} of its own training photos seen "
              f"whole: loss {r['own_photos']['loss']:.4f}", flush=True)
        (out / "results.json").write_text(json.dumps([kept[n] for n in sorted(kept)], indent=1))
    plot([kept[n] for n in sorted(kept)], out / "held_out_loss.png")
    print(f"wrote {out / 'results.json'} and {out / 'held_out_loss.png'}")


if __name__ == "__main__":
    main()
