"""What measuring ``data.mean`` / ``data.std`` costs on a folder of band files (``data.format=array``, the statistics
a run measures when they are not set): :func:`openmae.data.arrays.band_stats` as it runs (a file larger than its
share of the pixel budget measured on 256² windows read from its memory-mapped or tiled view) against reading every
picked file whole (what it did before), one thread, the files in the page cache; with the two results side by side.
``--folder-of N`` gives each file the share it would get in a folder of N files or more (256 read: a million
pixels a file), so that a few large scenes show what a folder of hundreds costs a file.

    python benchmarks/make_band_tiles.py --data ../shared/datasets/imagenet-sample --out runs/cog --count 4 \\
        --bands 13 --size 4096 --files tif-deflate-tiled
    python benchmarks/band_stats_cost.py runs/cog --bands 13
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from openmae.data.arrays import STATS_FILES, STATS_PIXELS, band_stats
from openmae.data.config import DataConfig
from openmae.data.datasets import build_source


class WholeFiles:
    """The source as band_stats read it before: every picked item loaded whole."""

    def __init__(self, source) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def load(self, index: int):
        return self.source.load(index)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--bands", type=int, default=13)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--folder-of", type=int, default=256, help="the folder size whose per-file share is used")
    args = parser.parse_args()
    torch.set_num_threads(1)
    source = build_source(DataConfig(name="folder", path=args.folder, format="array"), "train", args.bands)
    for rnd in range(args.rounds):
        row = {}
        for name, measured in (("windows", source), ("whole files", WholeFiles(source))):
            start = time.perf_counter()
            mean, std = band_stats(measured, pixels=STATS_PIXELS * len(source) // min(args.folder_of, STATS_FILES))
            row[name] = (time.perf_counter() - start, np.array(mean), np.array(std))
        (tw, mw, sw), (tf, mf, sf) = row["windows"], row["whole files"]
        print(f"round {rnd + 1}: {len(source)} files, each its share in a folder of {args.folder_of}; "
              f"windows {tw:.2f} s, whole files {tf:.2f} s ({tf / tw:.0f}x); "
              f"largest difference of a band's mean {np.abs(mw / mf - 1).max():.2%}, of its std "
              f"{np.abs(sw / sf - 1).max():.2%}", flush=True)


if __name__ == "__main__":
    main()
