"""Arrays of bands against images, on the same photos: CIFAR-10 photos written as 16-bit (H, W, 3) `.npy` arrays
(`data.format=array`, per-band mean/std measured on the training files) and the same photos as JPEGs, each
pretrained with the same settings and seeds (the same order, crops, flips and masks), then kNN and a cached linear
probe of both encoders, beside a random-init encoder. Equal numbers say the array path trains as the image path
does; it differs only by resampling floats instead of bytes and by its measured normalisation.

    python benchmarks/arrays.py --out runs/arrays                     # ~30 min on 2 CPU cores (bf16)
    python benchmarks/arrays.py --out /tmp/arr --smoke                # a minute, to check the script

Writes <out>/{image,array}/results.json step by step (a re-run continues) and prints a comparison last.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from protocol import REPO, Protocol, arguments, train_overrides

from openmae.data.datasets import STATS

MODEL = ["model.name=mae_vit_tiny_patch4_32"]


def write_folders(source: Path, out: Path, counts: dict[str, int]) -> tuple[Path, Path]:
    """``out/images`` (links to the JPEGs) and ``out/arrays`` (the same photos as uint16 arrays, 257 x the bytes),
    both ImageFolders of the first ``counts[split]`` photos of each class."""
    images, arrays = out / "images", out / "arrays"
    for split, count in counts.items():
        for class_dir in sorted(p for p in (source / split).iterdir() if p.is_dir()):
            (images / split / class_dir.name).mkdir(parents=True, exist_ok=True)
            (arrays / split / class_dir.name).mkdir(parents=True, exist_ok=True)
            for photo in sorted(class_dir.glob("*.jpg"))[:count]:
                link = images / split / class_dir.name / photo.name
                array = arrays / split / class_dir.name / f"{photo.stem}.npy"
                if not link.exists():
                    link.symlink_to(photo.resolve())
                if not array.exists():
                    np.save(array, np.asarray(Image.open(photo).convert("RGB"), dtype=np.uint16) * 257)
    return images, arrays


def main() -> None:
    parser = arguments(__doc__, "runs/arrays", 20, 0)
    parser.add_argument("--per-class", type=int, nargs=2, default=[500, 100], help="training and test photos a class")
    args = parser.parse_args()
    per_class = (40, 10) if args.smoke else tuple(args.per_class)
    epochs = 1 if args.smoke else args.pretrain_epochs
    out = Path(args.out)
    images, arrays = write_folders(Path(args.data_root) / "cifar10", out / "data",
                                   {"train": per_class[0], "test": per_class[1]})
    mean, std = STATS["cifar10"]
    model = MODEL + (["model.depth=2", "model.decoder_depth=1"] if args.smoke else [])
    common = dict(root=args.data_root, model=model, pretrain_config=REPO / "configs/pretrain/cifar10.yaml",
                  finetune_config=REPO / "configs/finetune/cifar10.yaml", workers=args.workers, train=train_overrides(args))
    runs = {
        "image": Protocol("imagefolder", out=out / "image", limit=[f"data.path={images}", f"data.mean={list(mean)}",
                                                                    f"data.std={list(std)}"], **common),
        "array": Protocol("imagefolder", out=out / "array", limit=[f"data.path={arrays}", "data.format=array"], **common),
    }
    for name, p in runs.items():
        ckpt = p.pretrain("pretrain", epochs, ["train.batch_size=128", "pretrain.vis_every_epochs=0"])
        p.knn("knn_mae", ckpt)
        p.knn("knn_mae_cls", ckpt, pooling="cls")
        p.probe("probe_mae", ckpt)
        if name == "image":
            p.knn("knn_random", None)
    keys = [k for k in runs["image"].results if k.startswith(("pretrain_loss", "knn_", "probe_"))]
    print(json.dumps({k: {name: p.results.get(k) for name, p in runs.items()} for k in keys}, indent=2))


if __name__ == "__main__":
    main()
