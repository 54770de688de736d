"""A loader worker's cost for one multi-band tile (``data.format=array``): the CPU path (read, crop + resize,
flip, normalise; a ``.npy`` file or an uncompressed TIFF memory-mapped and only the crop converted, a compressed
TIFF's tiles or strips the crop covers decoded, or, for comparison, the whole file read first) against the device path
(``data.device_augment``: read and cut out the crop; the resize, flip and normalisation left to the training
device). One thread, in the process, the tiles already in the page cache.

    python benchmarks/make_band_tiles.py --out runs/band_tiles --count 128 --bands 13 --size 256
    python benchmarks/array_worker_cost.py runs/band_tiles --bands 13 --size 224 --rounds 3
    python benchmarks/make_band_tiles.py --out runs/band_scenes --count 16 --bands 13 --size 1024   # larger files
    python benchmarks/array_worker_cost.py runs/band_scenes --bands 13 --size 224 --count 32 --rounds 3
    # crops of large compressed scenes (data.crop_scale: a 448x448 box of a 4096x4096 scene is 1.2% of it)
    python benchmarks/make_band_tiles.py --out runs/band_scenes_cog --count 8 --size 4096 --files tif-deflate-tiled
    python benchmarks/array_worker_cost.py runs/band_scenes_cog --bands 13 --size 224 --count 16 --crop-scale 0.005 0.02
"""

from __future__ import annotations

import argparse
import time

import torch

from openmae.data.build import train_dataset
from openmae.data.config import DataConfig
from openmae.data.loader import SeededSamples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tiles")
    parser.add_argument("--bands", type=int, default=13)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--count", type=int, default=128, help="tiles timed a round (after 8 untimed)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--crop-scale", type=float, nargs=2, default=(0.2, 1.0), help="data.crop_scale")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a loader worker
    for rnd in range(args.rounds):
        row = {}
        for name in ("CPU path, whole file read", "CPU path", "device path"):
            cfg = DataConfig(name="folder", path=args.tiles, format="array", device_augment=name == "device path",
                             num_workers=0, mean=(30000.0,) * args.bands, std=(15000.0,) * args.bands, repeat=8,
                             crop_scale=tuple(args.crop_scale))
            dataset, sampler = train_dataset(cfg, (args.size, args.size), args.bands, 8, seed=rnd)
            if name == "CPU path, whole file read":  # the training transform on the whole array, not the mapped crop
                dataset = SeededSamples(dataset.source, dataset.transform.plain)
            items = list(sampler)[: args.count + 8]
            for item in items[:8]:
                dataset[item]
            start = time.perf_counter()
            for item in items[8:]:
                dataset[item]
            row[name] = (time.perf_counter() - start) / args.count * 1e3
        print(f"round {rnd + 1}: " + ", ".join(f"{k} {v:.2f} ms a tile" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
