"""What `evaluate.map_views` changes in a distance map, drawn: for a few of `error_maps.py`'s Fashion-MNIST test
images with a pasted CIFAR-10 square, a row each of the image, the pasted square (white), the distance map of the
grid as it is and the map of 4 views of the grid (`openmae.eval.grid_views`), both against the model's training
images as the reference (each view's read at its shift) and drawn on one scale.

    python benchmarks/views_figure.py runs/views/fm_normpix/model-last.pth -o docs/figures/map_views.png
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from error_maps import arguments, case  # noqa: E402  (the same options and pasted squares)

from openmae.data.build import eval_batches  # noqa: E402
from openmae.eval.patch_distance import build_reference, reference_distances  # noqa: E402

ROWS = 5


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("-o", "--figure", required=True, help="write the figure there")
    parser.add_argument("--views", type=int, default=4)
    args = parser.parse_args()
    c = case(args.checkpoints[0], args)
    model, size = c.model, c.model.cfg.img_size
    reference = [b.images for b in eval_batches(c.data, "train", size, 1, 250, args.reference)]
    images = c.foreign[:ROWS]  # (ROWS, 1, H, W)
    maps = {views: reference_distances(model, images, build_reference(model, reference, views))
            for views in (1, args.views)}  # (ROWS, h', w') each
    top = max(float(m.max()) for m in maps.values())
    titles = ["image", "pasted square", "1 view", f"{args.views} views"]
    fig, axes = plt.subplots(ROWS, 4, figsize=(6.4, 1.6 * ROWS))
    for r in range(ROWS):
        panels = [c.std[0] * images[r, 0] + c.mean[0], c.where[r].float(), maps[1][r], maps[args.views][r]]
        for k, (ax, panel) in enumerate(zip(axes[r], panels, strict=True)):
            scale = {"vmin": 0, "vmax": top, "cmap": "inferno"} if k >= 2 else {"cmap": "gray"}
            ax.imshow(panel.numpy(), interpolation="nearest", **scale)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[k], fontsize=9)
    fig.suptitle(f"{Path(args.checkpoints[0]).parent.name}: distance from the training images' patches", fontsize=9)
    fig.tight_layout()
    Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.figure, dpi=120)
    print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
