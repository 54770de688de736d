"""ImageNet-sample protocol: pretrain an MAE on 900 of the 1,000 sample photos, then reconstruct the 100 photos
it never saw (every tenth file, sorted by name) and measure how well it fills in their removed patches.

    python benchmarks/imagenet_sample.py --out runs/imagenet_sample            # 224px ViT-S/16 (a GPU: minutes)
    python benchmarks/imagenet_sample.py --smoke                               # 64px, tiny model, CPU, ~1 minute

The number beside the pictures: mean squared error on the removed patches of the held-out photos (pixels
normalised with the ImageNet mean and std, 75% of patches removed, fixed masks), for the pretrained model, the
same model at initialisation, and the "blur of the mean colour" answer (each removed patch filled with the mean
colour of the photo's visible patches). Writes ``<out>/results.json``, ``<out>/heldout.png``, ``<out>/train.png``
(original | masked | reconstruction | visible patches pasted back) and ``<out>/loss.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch

from openmae.config import load_config
from openmae.convert.checkpoints import load_pretrained
from openmae.data.config import DataConfig
from openmae.data.datasets import stats_for
from openmae.data.folders import find_images
from openmae.data.images import open_image
from openmae.data.transforms import eval_transform
from openmae.engine.logging import read_metrics
from openmae.engine.pretrain import PretrainConfig, pretrain
from openmae.eval.plots import loss_curve
from openmae.eval.reconstruction import predicted_patches, reconstruct, save_grid
from openmae.models.mae import MaskedAutoencoder
from openmae.models.patches import patchify

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs/pretrain/imagenet_sample.yaml"
DEFAULT_PHOTOS = Path(os.environ.get("OPENMAE_DATA", REPO.parent / "shared" / "datasets")) / "imagenet-sample"
SMOKE = ["model.name=mae_vit_tiny_patch4_32", "model.img_size=[64,64]", "model.patch_size=8", "train.epochs=2",
         "train.warmup_epochs=1", "train.batch_size=32", "data.repeat=1", "data.num_workers=2", "train.compile=false"]


def split(photos: Path, out: Path) -> tuple[Path, list[Path]]:
    """Every tenth photo (sorted by name) is held out; the rest are linked into ``out/train`` for pretraining."""
    files = sorted(find_images(photos))
    if len(files) < 20:
        raise SystemExit(f"{photos} holds {len(files)} images; the protocol needs at least 20 (it holds out every tenth)")
    heldout = files[::10]
    train_dir = out / "train-images"
    if train_dir.exists():
        shutil.rmtree(train_dir)
    train_dir.mkdir(parents=True)
    for i, f in enumerate(files):
        if i % 10:
            link = train_dir / f"{i:05d}_{f.name}"  # the index keeps names unique across sub-folders
            try:
                link.symlink_to(f.resolve())
            except OSError:  # a file system without links
                shutil.copyfile(f, link)
    return train_dir, heldout


def load_batch(paths: list[Path], model: MaskedAutoencoder, data: DataConfig) -> torch.Tensor:
    """(N, C, H, W) normalised images: resize + centre crop to the model's size."""
    mean, std = stats_for(data, model.cfg.in_chans)
    transform = eval_transform(data, model.cfg.img_size, mean, std)
    return torch.stack([transform(open_image(p, model.cfg.in_chans)) for p in paths])


@torch.no_grad()
def masked_errors(model: MaskedAutoencoder, imgs: torch.Tensor, mask_ratio: float, batch: int = 50) -> dict[str, float]:
    """MSE on removed patches (normalised pixels) of the model and of the mean-visible-colour fill, fixed masks."""
    model.eval()
    device = next(model.parameters()).device
    p, c = model.cfg.patch_size, model.cfg.in_chans
    sums = {"model": 0.0, "mean_colour": 0.0}
    removed = 0.0
    for start in range(0, len(imgs), batch):
        x = imgs[start : start + batch].to(device)
        gen = torch.Generator().manual_seed(start)
        noise = model.random_noise(x.shape[0], torch.device("cpu"), gen, mask_ratio).to(device)
        out = model(x, mask_ratio=mask_ratio, noise=noise)
        target = patchify(x, p)  # (N, L, p*p*C), channels last within a patch
        pred = predicted_patches(model, x, out.pred)
        mask = out.mask  # (N, L), 1 = removed
        pixels = target.reshape(*target.shape[:2], p * p, c)  # (N, L, p*p, C)
        visible = (1 - mask)[..., None, None]
        colour = (pixels * visible).sum(dim=(1, 2)) / (visible.sum(dim=(1, 2)) * p * p)  # (N, C)
        fill = colour[:, None, None, :].expand_as(pixels).reshape_as(target)
        for name, guess in (("model", pred), ("mean_colour", fill)):
            sums[name] += (((guess - target) ** 2).mean(dim=-1) * mask).sum().item()
        removed += mask.sum().item()
    return {name: total / removed for name, total in sums.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default=str(DEFAULT_PHOTOS), help="the folder of photos (any size, flat or nested)")
    parser.add_argument("--out", default="runs/imagenet_sample")
    parser.add_argument("--smoke", action="store_true", help="64px, a tiny model, 2 epochs: checks the script end to end")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.epochs=40 data.num_workers=15")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_dir, heldout = split(Path(args.photos), out)
    overrides = [f"data.path={train_dir}", f"train.output_dir={out / 'run'}", "train.resume=auto",
                 *(SMOKE if args.smoke else []), *args.overrides]
    cfg = load_config(PretrainConfig, [CONFIG], overrides)
    if cfg.train.compile and not torch.cuda.is_available():
        cfg.train.compile = False  # compiling pays back on a GPU only at this size
    timer = time.time()
    pretrain(cfg)
    minutes = (time.time() - timer) / 60
    run_dir = out / "run"
    records = read_metrics(run_dir / "metrics.jsonl")
    loss_curve(records, out / "loss.png", "MAE pretraining on the ImageNet sample photos")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    trained = load_pretrained(run_dir / "model-last.pth").to(device)
    torch.manual_seed(cfg.train.seed)
    initial = MaskedAutoencoder(trained.cfg).to(device)
    imgs = load_batch(heldout, trained, cfg.data)
    mask_ratio = cfg.pretrain.mask_ratio
    errors = masked_errors(trained, imgs, mask_ratio)
    errors_init = masked_errors(initial, imgs, mask_ratio)
    mean, std = stats_for(cfg.data, trained.cfg.in_chans)
    shown = imgs[:: max(1, len(imgs) // 8)][:8]
    save_grid(reconstruct(trained, shown, mean, std, mask_ratio, seed=1), out / "heldout.png")
    train_photos = sorted(find_images(train_dir))
    save_grid(reconstruct(trained, load_batch(train_photos[:: max(1, len(train_photos) // 8)][:8], trained, cfg.data),
                          mean, std, mask_ratio, seed=1), out / "train.png")
    losses = [r["loss"] for r in records if "loss" in r]
    results = {
        "command": "python benchmarks/imagenet_sample.py " + " ".join(
            [*(["--smoke"] if args.smoke else []), *args.overrides]),
        "machine": f"{platform.node()}, {os.cpu_count()} cores, "
                   f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"), "pretrain_minutes": round(minutes, 2),
        "train_images": len(train_photos), "heldout_images": len(heldout),
        "model": cfg.model.name, "img_size": list(trained.cfg.img_size), "epochs": cfg.train.epochs,
        "repeat": cfg.data.repeat, "batch_size": cfg.train.batch_size, "final_train_loss": losses[-1] if losses else None,
        "heldout_mse_removed": errors["model"], "heldout_mse_removed_at_init": errors_init["model"],
        "heldout_mse_removed_mean_colour": errors["mean_colour"],
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
