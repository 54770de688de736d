"""The first batches of a run over ``.nii.gz`` volumes with an empty ``data.volume_cache``: how many times the loader's
workers decompress each volume, and how long the first batches take, with the lock that lets one worker decompress
a volume while the others wait for it, and without it (``fcntl`` hidden: the workers decompress what they meet).
Each volume is the CT-like phantom of ``volume_slice_cost.py`` (another noise seed each); the loader reads random
axial slices in batches, as a pretraining's first epoch does. Both settings alternate over the rounds.

    python benchmarks/volume_cache_first_pass.py --out runs/volume_cache --volumes 8 --workers 4
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from volume_slice_cost import phantom

from openmae.data import volume_cache
from openmae.data.volumes import FileVolumes


class Slices(torch.utils.data.Dataset):
    def __init__(self, source: FileVolumes) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.source.load(index)[0]


def first_pass(files: list[Path], cache: Path, log: Path, args: argparse.Namespace, seed: int) -> tuple[float, int]:
    """(seconds for the first ``args.batches`` batches, decompressions) from an empty cache."""
    shutil.rmtree(cache, ignore_errors=True)
    log.write_text("")
    source = FileVolumes(files, None, 1, [], cache=str(cache))
    loader = torch.utils.data.DataLoader(Slices(source), batch_size=args.batch, shuffle=True,
                                         num_workers=args.workers, generator=torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    for b, _ in enumerate(loader):
        if b + 1 == args.batches:
            break
    seconds = time.perf_counter() - start
    del loader
    return seconds, len(log.read_text().split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/volume_cache")
    parser.add_argument("--volumes", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--slices", type=int, default=80)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    import nibabel as nib

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for v in range(args.volumes):
        files.append(out / f"ct{v}.nii.gz")
        if not files[-1].is_file():
            nib.save(nib.Nifti1Image(phantom(args.size, args.slices, seed=v), np.diag([0.7, 0.7, 1.5, 1.0])), files[-1])
    logging.getLogger("openmae.data.volumes").setLevel(logging.ERROR)
    log = out / "decompressions.log"
    write = volume_cache._write

    def logged(*args):  # in the workers (forked after this is set): one line a volume decompressed and written
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        write(*args)

    volume_cache._write = logged
    lock = volume_cache.fcntl
    print(f"{args.volumes} volumes of {args.size}x{args.size}x{args.slices}, {args.workers} workers, "
          f"{args.batches} batches of {args.batch} random axial slices, {os.cpu_count()} CPUs")
    for rnd in range(args.rounds):
        for name, module in (("without the lock", None), ("with the lock", lock)):
            volume_cache.fcntl = module
            seconds, count = first_pass(files, out / "cache", log, args, seed=rnd)
            print(f"round {rnd} {name}: {seconds:.2f} s, {count} decompressions of {args.volumes} volumes", flush=True)
    volume_cache.fcntl = lock


if __name__ == "__main__":
    main()
