"""Large JPEGs for the loader benchmark, as from a camera: ImageNet-sample photos enlarged (bicubic) and saved at
quality 90. An enlarged photo holds less detail than a camera's of the same size, so its entropy decoding is
cheaper; the rest of decoding, and the resize, cost the same.

    python benchmarks/make_large_photos.py --out runs/large_photos --count 64 --scale 6   # ~3000x2250 px
    python benchmarks/loader.py --data runs/large_photos --workers 2 --images 64 --batch 16
    python benchmarks/loader.py --data runs/large_photos --workers 2 --images 64 --batch 16 --no-draft
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def photo_arguments(doc: str, count: int) -> argparse.ArgumentParser:
    """--data (the ImageNet sample), --out and --count: what the scripts making test files from its photos share."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(os.environ.get("OPENMAE_DATA", REPO.parent / "shared" / "datasets"))
                                              / "imagenet-sample"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--count", type=int, default=count)
    return parser


def spread_photos(data: str, count: int) -> list[Path]:
    """``count`` of the photos in ``data``, spread evenly over their sorted names."""
    photos = sorted(Path(data).glob("*.JPEG"))
    return photos[:: max(1, len(photos) // count)][:count]


def main() -> None:
    parser = photo_arguments(__doc__, 64)
    parser.add_argument("--scale", type=int, default=6)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for src in spread_photos(args.data, args.count):
        with Image.open(src) as img:
            img = img.convert("RGB")
            img.resize((img.width * args.scale, img.height * args.scale), Image.Resampling.BICUBIC).save(
                out / f"{src.stem}.jpg", quality=90)
    print(f"{args.count} photos enlarged {args.scale}x in {out}")


if __name__ == "__main__":
    main()
