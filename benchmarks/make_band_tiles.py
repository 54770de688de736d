"""Multi-band tiles for the loader benchmark, as a satellite's: ImageNet-sample photos centre-cropped to a square,
resized to ``--size`` and written as ``--bands`` 16-bit bands (the photo's red, green and blue repeated in turn,
each copy at another gain), alternately as ``.npy`` (H, W, C) and as TIFF (C, H, W) (``--files``: one kind only;
``tif-deflate`` for deflate-compressed TIFFs in strips, ``tif-deflate-tiled`` in 256x256 tiles with the bands
interleaved, as a compressed scene or a cloud-optimised GeoTIFF is stored). Reading and augmenting cost the same
whatever the bands hold.

    python benchmarks/make_band_tiles.py --out runs/band_tiles --count 128 --bands 13 --size 256
    python benchmarks/make_band_tiles.py --out runs/band_tiles_deflate --count 128 --files tif-deflate
    python benchmarks/make_band_tiles.py --out runs/band_scenes_cog --count 8 --size 4096 --files tif-deflate-tiled
    python benchmarks/loader.py --data runs/band_tiles --format array --bands 13 --workers 0 1 2 --images 128
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from make_large_photos import photo_arguments, spread_photos
from PIL import Image


def main() -> None:
    parser = photo_arguments(__doc__, 128)
    parser.add_argument("--bands", type=int, default=13)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--files", choices=("both", "npy", "tif", "tif-deflate", "tif-deflate-tiled"), default="both",
                        help="both: .npy and uncompressed TIFF in turn")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gains = 40 + 20 * np.arange(args.bands)  # band b: 8-bit value times 40, 60, 80, ... (up to 65535)
    for i, src in enumerate(spread_photos(args.data, args.count)):
        with Image.open(src) as img:
            img = img.convert("RGB")
            side = min(img.size)
            box = ((img.width - side) // 2, (img.height - side) // 2)
            img = img.crop((*box, box[0] + side, box[1] + side)).resize((args.size, args.size), Image.Resampling.BICUBIC)
        rgb = np.asarray(img, dtype=np.float64)  # (H, W, 3)
        hwc = np.minimum(rgb[..., np.arange(args.bands) % 3] * gains, 65535).astype(np.uint16)
        if args.files == "tif-deflate-tiled":
            tifffile.imwrite(out / f"{src.stem}.tif", hwc, photometric="minisblack", planarconfig="contig",
                             tile=(256, 256), compression="zlib", predictor=True)
        elif args.files.startswith("tif") or (args.files == "both" and i % 2):
            tifffile.imwrite(out / f"{src.stem}.tif", hwc.transpose(2, 0, 1), photometric="minisblack",
                             planarconfig="separate", compression="zlib" if args.files == "tif-deflate" else None)
        else:
            np.save(out / f"{src.stem}.npy", hwc)
    print(f"{args.count} tiles of {args.bands} bands, {args.size}x{args.size}, in {out}")


if __name__ == "__main__":
    main()
