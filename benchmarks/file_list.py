"""What a dataset's list of files costs: the folder scan, the list's memory in the training process, and the memory a
forked loader worker copies by reading every item, for the packed ``FileList`` against a list of ``Path`` objects,
and likewise for the item indices of a subset (``data.holdout``, ``max_samples``, ``repeat``) as an int64 array
against a list of ints.

The scan is timed on a real folder (``--folder``, CIFAR-10's 60,000 JPEGs by default); the memory on ``--files``
ImageNet-like names (``/data/imagenet/train/<wnid>/<wnid>_<i>.JPEG``, 1,000 folders; no files are made). A worker's
copy is its private memory (``/proc/self/smaps_rollup``) after reading every path of the list once, less before.

    python benchmarks/file_list.py --files 1281167
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from openmae.data.build import holdout_indices
from openmae.data.filelist import FileList
from openmae.data.folders import find_images


def private_mb() -> float:
    with open("/proc/self/smaps_rollup") as fh:
        return sum(int(line.split()[1]) for line in fh if line.startswith(("Private_Dirty", "Private_Clean"))) / 1024


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class ReadAll(torch.utils.data.Dataset):
    """One item: the worker reads every path of ``files`` and returns its private memory's growth (MB)."""

    def __init__(self, files) -> None:
        self.files = files

    def __len__(self) -> int:
        return 1

    def __getitem__(self, _: int) -> float:
        before = private_mb()
        for i in range(len(self.files)):
            self.files[i]
        return private_mb() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", default=str(Path(os.environ.get("OPENMAE_DATA", "../shared/datasets")) / "cifar10"))
    parser.add_argument("--files", type=int, default=1_281_167)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    for r in range(args.rounds):
        start = time.perf_counter()
        found = find_images(args.folder)
        scan = time.perf_counter() - start
        start = time.perf_counter()
        as_paths = sorted(map(Path, found))  # what the scan returned before: Paths sorted as paths
        print(f"scan of {args.folder}: {len(found)} files in {scan:.2f} s; building and sorting them as Path objects "
              f"{time.perf_counter() - start:.2f} s more (round {r + 1})")
    del found, as_paths

    names = [f"/data/imagenet/train/n{c:08d}/n{c:08d}_{i}.JPEG" for c in range(1000) for i in range(args.files // 1000)]
    for kind in ("packed", "paths"):  # packed first: pathlib interns parts, shared with any live Path's
        gc.collect()
        base = rss_mb()
        start = time.perf_counter()
        files = FileList(names) if kind == "packed" else sorted(map(Path, names))
        built = time.perf_counter() - start
        if kind == "paths":
            files[len(files) // 2] < files[0]  # noqa: B015  # a sorted list's Paths hold their parts, as after a scan
        held = rss_mb() - base
        loader = torch.utils.data.DataLoader(ReadAll(files), batch_size=None, num_workers=1,
                                             multiprocessing_context="fork")
        copied = next(iter(loader))
        print(f"{kind:6s} {len(names)} files: built in {built:.2f} s, {held:.0f} MB in the process "
              f"({held * 2**20 / len(names):.0f} bytes a file); a worker reading every path copies {copied:.0f} MB "
              f"({copied * 2**20 / len(names):.0f} bytes a file)")
        del files, loader
    kept = holdout_indices(len(names), 0.01, 0)[0]  # data.holdout's training items, as a list and as a SourceView's
    del names
    for kind in ("int64 array", "list of ints"):
        index = np.asarray(kept, dtype=np.int64) if kind == "int64 array" else list(kept)
        held = index.nbytes if kind == "int64 array" else 8 * len(index) + sum(map(sys.getsizeof, index))
        loader = torch.utils.data.DataLoader(ReadAll(index), batch_size=None, num_workers=1,
                                             multiprocessing_context="fork")
        copied = next(iter(loader))
        print(f"{kind:12s} {len(index)} item indices (data.holdout=0.01): {held / 2**20:.0f} MB; a worker "
              f"reading every index copies {copied:.0f} MB")
        del index, loader
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
