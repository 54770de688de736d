"""Would distance maps localise better from shifted views of the patch grid? Each image (and each reference image)
is read again shifted by a fraction of a patch (``--views 4``: the grid also shifted by half a patch down, right and
both; 9: by thirds), each view searched against the reference read with the same shift, each view's map shifted back
and the views' maps averaged: a map of finer steps than a patch. Measured on `error_maps.py`'s Fashion-MNIST test
images with a pasted CIFAR-10 square (the 1,000 untouched ones as normal images, the 1,000 pasted-into ones with
their squares as defects): the pixel ROC-AUC and PRO (`openmae.eval.defect_masks`) of each number of views. The
shift is a roll (the pixels pushed past one edge come back at the other): Fashion-MNIST's borders are black.
The experiment that led to `evaluate.map_views` (:mod:`openmae.eval.grid_views`), which reflects the edges instead
and averages each cell over the views that reach it; `defect_folder.py --map-views` measures the option.

    python benchmarks/shifted_maps.py runs/error_maps/fm_pixels_15/model-last.pth --views 1 4 9
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from error_maps import arguments, case  # the same options and pasted squares

from openmae.data.build import eval_batches
from openmae.eval.defect_masks import pixel_auc, pro_auc, regions
from openmae.eval.feature_map import patch_tokens
from openmae.eval.patch_distance import bank_from, nearest


def shifts(views: int, patch: int) -> list[tuple[int, int]]:
    """The (down, right) shifts in pixels of ``views`` views (a square number): the grid moved by 1/k of a patch."""
    k = round(views**0.5)
    if k * k != views:
        raise SystemExit(f"--views {views}: give a square number (1, 4, 9)")
    steps = [round(i * patch / k) for i in range(k)]
    return [(a, b) for a in steps for b in steps]


def tokens(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The patch tokens (N, h, w, D) of ``images``, 250 at a time."""
    return torch.cat([patch_tokens(model, part) for part in images.split(250)])


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--views", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    results: dict = {"images": args.images, "reference": args.reference, "size": args.size, "models": {}}
    for path in args.checkpoints:
        c = case(path, args)
        model, size = c.model, c.model.cfg.img_size
        reference = torch.cat([b.images for b in eval_batches(c.data, "train", size, 1, 250, args.reference)])
        images = torch.cat([c.clean, c.foreign])  # (2N, 1, H, W)
        truth = torch.cat([torch.zeros_like(c.where), c.where])  # (2N, H, W)
        areas = regions(truth)

        rows = {}
        for views in args.views:
            began = time.perf_counter()
            total = torch.zeros(truth.shape)
            for dy, dx in shifts(views, model.cfg.patch_size):
                bank = bank_from(tokens(model, torch.roll(reference, (dy, dx), (2, 3))))  # the reference at the same shift
                queries = tokens(model, torch.roll(images, (dy, dx), (2, 3)))  # (2N, h, w, D)
                distances = nearest(queries.flatten(0, 2), bank).reshape(queries.shape[:3]) / bank.scale
                pixels = F.interpolate(distances[:, None], size=tuple(size), mode="nearest")[:, 0]
                total += torch.roll(pixels, (-dy, -dx), (1, 2))  # back where the view saw it
            total /= views
            rows[views] = {"pixel_auc": pixel_auc(total, truth), "pro": pro_auc(total, areas),
                           "seconds": round(time.perf_counter() - began, 1)}
            print(f"[shifted maps] {Path(path).parent.name}, {views} views: {json.dumps(rows[views])}", flush=True)
        results["models"][Path(path).parent.name] = {"checkpoint": path, "views": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
