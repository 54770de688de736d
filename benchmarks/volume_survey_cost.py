"""What ``data.volume_norm`` / ``data.min_foreground`` cost before training: the survey that reads every slice of
a volume once (:mod:`openmae.data.survey`), by how the volume is stored, on the CT-like phantom of
``volume_slice_cost.py`` (a 512x512x160 int16 volume, air around a body). Timed: building ``FileVolumes`` over one
file with ``volume_norm=percentile``, ``foreground=-500``, ``min_foreground=0.05`` (z-score costs the same pass
without the percentiles); the ``.nii.gz`` with ``data.volume_cache`` twice, its second survey read from the cache's
JSON. Then 8 copies of the ``.nii`` surveyed on 1 thread and on as many as the survey uses (8, or the cores).
Per-process memory of surveys is cleared before every timing; the files are in the page cache.

    python benchmarks/volume_survey_cost.py --out runs/volumes --size 512 --slices 160 --rounds 3
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import time
from pathlib import Path

import torch
from volume_slice_cost import phantom, write_all

from openmae.data import survey
from openmae.data.survey import Settings
from openmae.data.volumes import FileVolumes

SETTINGS = Settings("percentile", foreground=-500.0, min_foreground=0.05)


def timed(files: list[Path], cache: str = "") -> tuple[float, FileVolumes]:
    survey._SURVEYS.clear()
    survey._SURVEYED.clear()
    start = time.perf_counter()
    source = FileVolumes(files, None, 1, [], cache=cache, survey=SETTINGS)
    return time.perf_counter() - start, source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/volumes")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--slices", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(1)
    out = Path(args.out)
    paths = write_all(phantom(args.size, args.slices), out)
    print(f"survey of a {args.size}x{args.size}x{args.slices} int16 volume, {args.rounds} rounds (s)")
    for path in paths:
        times = [timed([path])[0] for _ in range(args.rounds)]
        _, source = timed([path])
        print(f"{path.name:12s} {min(times):7.2f}-{max(times):5.2f}  kept {len(source)} of {args.slices} slices, "
              f"scale {source.surveys[0].shift[0]:.0f}..{source.surveys[0].shift[0] + source.surveys[0].scale[0]:.0f}")
    gz = [p for p in paths if p.name.endswith(".nii.gz")]
    for _ in range(args.rounds):
        cache = out / "survey_cache"
        shutil.rmtree(cache, ignore_errors=True)
        first, _ = timed(gz, str(cache))
        again, _ = timed(gz, str(cache))
        print(f"ct.nii.gz with data.volume_cache: first {first:.2f} s (decompresses into the cache), "
              f"next run {again * 1000:.1f} ms (the survey's JSON)")
    copies = []
    for i in range(8):
        copy = out / f"copy{i}.nii"
        shutil.copyfile(paths[0], copy)
        copies.append(copy)
    for threads in sorted({1, min(survey.THREADS, os.cpu_count() or 1)}):
        survey.THREADS = threads
        times = [timed(copies)[0] for _ in range(args.rounds)]
        print(f"8 x ct.nii on {threads} thread(s) ({os.cpu_count()} cores): {statistics.median(times):.2f} s median "
              f"({min(times):.2f}-{max(times):.2f})")


if __name__ == "__main__":
    main()
