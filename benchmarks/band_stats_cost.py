"""What measuring ``data.mean`` / ``data.std`` costs on a folder of band files (``data.format=array``, the statistics
a run measures when they are not set): :func:`openmae.data.arrays.band_stats` as it runs (a file larger than its
share of the pixel budget measured on 256² windows read from its memory-mapped or tiled view) against reading every
picked file whole (what it did before), and the windows in one process (never forked), the files in the page cache;
with the results side by side. ``--folder-of N`` gives each file the share it would get in a folder of N files or more (256 read: a million
pixels a file), so that a few large scenes show what a folder of hundreds costs a file.

    python benchmarks/make_band_tiles.py --data ../shared/datasets/imagenet-sample --out runs/cog --count 4 \\
        --bands 13 --size 4096 --files tif-deflate-tiled
    python benchmarks/band_stats_cost.py runs/cog --bands 13
    python benchmarks/make_band_tiles.py --data ../shared/datasets/imagenet-sample --out runs/cog256 --count 256 \\
        --bands 13 --size 512 --files tif-deflate-tiled
    python benchmarks/band_stats_cost.py runs/cog256 --bands 13 --no-whole --rounds 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from openmae.data import ranks
from openmae.data.arrays import STATS_FILES, STATS_PIXELS, band_stats
from openmae.data.config import DataConfig
from openmae.data.datasets import build_source
from openmae.engine.host_memory import keep_freed_host_memory


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
    parser.add_argument("--no-whole", action="store_true", help="leave out reading whole files (long for many files)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    keep_freed_host_memory()  # as a training run does before it measures the statistics
    source = build_source(DataConfig(name="folder", path=args.folder, format="array"), "train", args.bands)
    settings = {"windows": (source, ranks.POOL_AFTER_S), "windows, one process": (source, float("inf"))}
    if not args.no_whole:
        settings["whole files"] = (WholeFiles(source), ranks.POOL_AFTER_S)
    after = ranks.POOL_AFTER_S
    for rnd in range(args.rounds):
        row = {}
        for name, (measured, ranks.POOL_AFTER_S) in settings.items():  # one process: never forked
            start = time.perf_counter()
            mean, std = band_stats(measured, pixels=STATS_PIXELS * len(source) // min(args.folder_of, STATS_FILES))
            row[name] = (time.perf_counter() - start, np.array(mean), np.array(std))
        ranks.POOL_AFTER_S = after
        (tw, mw, sw), (to, mo, so) = row["windows"], row["windows, one process"]
        assert (mw == mo).all() and (sw == so).all()  # forked processes add the same sums in the same order
        line = (f"round {rnd + 1}: {len(source)} files, each its share in a folder of {args.folder_of}; "
                f"windows {tw:.2f} s ({ranks.pool_size()} processes where long), in one process {to:.2f} s")
        if "whole files" in row:
            tf, mf, sf = row["whole files"]
            line += (f", whole files {tf:.2f} s ({tf / tw:.0f}x); largest difference of a band's mean "
                     f"{np.abs(mw / mf - 1).max():.2%}, of its std {np.abs(sw / sf - 1).max():.2%}")
        print(line, flush=True)


if __name__ == "__main__":
    main()
