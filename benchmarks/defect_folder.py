"""The anomaly-detection workflow end to end, through the commands a user runs: a folder laid out as MVTec AD's
(train/good/, test/good/, test/<defect>/) built from Fashion-MNIST, its defect a square of a grey CIFAR-10 photo
pasted in (`benchmarks/error_maps.py`'s), then `openmae evaluate` of each MAE with the training images as the
reference (`evaluate.reference_images`), `evaluate.normal_class=good` and the pasted squares as ground-truth masks
(`evaluate.defect_masks`): each score's ROC-AUC of telling the pasted-into test images from the good ones, and how
well the distance maps and the error maps find the pasted pixels (pixel ROC-AUC, per-region overlap PRO), as the
command reports them; with `--coreset`, again with that share of the reference searched; with `--map-views`, again
in those views of the patch grid (`evaluate.map_views`).

Unlike `error_maps.py`, the good and the pasted-into test images are different images (as a real inspection's are),
and the images go through files (PNG) and the command's own reading.

    python benchmarks/defect_folder.py runs/frozen_encoder/whole/model-last.pth --json docs/results_defect_folder.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from error_maps import arguments, pasted  # the same options and pasted squares
from PIL import Image

from openmae.data.build import eval_batches
from openmae.data.config import DataConfig


def write_pngs(images: torch.Tensor, folder: Path, start: int) -> None:
    """Images (N, 1, H, W) in [0, 1] as 8-bit grey PNGs ``folder/<start + i>.png``."""
    folder.mkdir(parents=True, exist_ok=True)
    pixels = (images[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    for i, image in enumerate(pixels):
        Image.fromarray(image, mode="L").save(folder / f"{start + i:05d}.png")


def build(root: Path, out: Path, args: argparse.Namespace) -> None:
    """The MVTec AD-like folder under ``out``: ``--reference`` training images as train/good, ``--images`` test
    images as test/good and as many others, each pasted into, as test/pasted."""
    raw = DataConfig(name="fashion-mnist", root=str(root), num_workers=0, mean=[0.0], std=[1.0])  # pixels in [0, 1]
    train = torch.cat([b.images for b in eval_batches(raw, "train", (28, 28), 1, 500, args.reference)])
    test = torch.cat([b.images for b in eval_batches(raw, "test", (28, 28), 1, 500, 2 * args.images)])
    foreign, where = pasted(test[args.images :], root, args.size, 0.0, 1.0, args.seed)
    write_pngs(train, out / "train" / "good", 0)
    write_pngs(test[: args.images], out / "test" / "good", 0)
    write_pngs(foreign, out / "test" / "pasted", args.images)
    masks = out / "ground_truth" / "pasted"  # MVTec AD's names: <image>_mask.png, white where pasted
    masks.mkdir(parents=True)
    for i, pixels in enumerate(where.numpy()):
        Image.fromarray((pixels * 255).astype("uint8"), mode="L").save(masks / f"{args.images + i:05d}_mask.png")


def evaluate(checkpoint: str, folder: Path, json_out: Path, *extra: str) -> dict:
    """`openmae evaluate` of ``checkpoint`` on ``folder``'s test images against its training images; its JSON."""
    command = [sys.executable, "-m", "openmae", "evaluate", "--checkpoint", checkpoint, "data.name=imagefolder",
               f"data.path={folder}", f"evaluate.reference_images={folder / 'train' / 'good'}",
               "evaluate.normal_class=good", f"evaluate.defect_masks={folder / 'ground_truth'}", "-o", str(json_out),
               *extra]
    began = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(json_out.read_text())
    result["seconds"] = round(time.perf_counter() - began, 1)
    return result


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--coreset", type=float, default=0.0, help="also search this share of the reference")
    parser.add_argument("--map-sigma", type=float, nargs="*", default=[], help="also score the maps smoothed by "
                        "each of these Gaussians (evaluate.map_sigma, pixels), the whole reference searched")
    parser.add_argument("--map-views", type=int, nargs="*", default=[], help="also search in each of these numbers "
                        "of views of the patch grid (evaluate.map_views: 4, 9, ...), the whole reference searched")
    args = parser.parse_args()
    root = Path(args.data_root)
    results: dict = {"images": args.images, "reference": args.reference, "size": args.size, "seed": args.seed,
                     "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "part"
        build(root, folder, args)
        for path in args.checkpoints:
            runs = {"whole reference": ()}
            if args.coreset:
                runs[f"coreset {args.coreset:g}"] = (f"evaluate.reference_coreset={args.coreset}",)
            for views in args.map_views:
                runs[f"{views} views of the grid"] = (f"evaluate.map_views={views}",)
            for sigma in args.map_sigma:
                runs[f"maps smoothed, sigma {sigma:g}"] = (f"evaluate.map_sigma={sigma}",)
            name = Path(path).parent.name
            results["models"][name] = {"checkpoint": path}
            for run, extra in runs.items():
                got = evaluate(path, folder, Path(tmp) / "out.json", *extra)
                kept = {k: v for k, v in got.items() if k.startswith(("detection_auc_", "pixel_auc_", "pro_")) or k
                        in ("loss", "farthest_patch", "beyond_reference", "samples", "seconds", "map_sigma", "map_views")}
                results["models"][name][run] = kept
                print(f"[defect folder] {name}, {run}: {json.dumps(kept)}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
