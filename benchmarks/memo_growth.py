"""Memory a long-lived process (a notebook) holds after building a growing list of volume files again and again:
each build adds ``--step`` files, surveys every volume (``data.volume_norm``) and lets the built list go. What stays is
the per-process memos' (volume headers, whole-list surveys, per-volume surveys): with their bounds (the last four
header lists, eight survey lists, per-volume surveys for twice the largest build) and, for the ratio, unbounded, as
every memo was before the thirty-fourth session. Python's heap measured with ``tracemalloc`` after each build.

    python benchmarks/memo_growth.py --out /tmp/memobench --files 8000 --builds 16
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from pathlib import Path

import numpy as np

from openmae.data import survey, volumes
from openmae.data.memo import Recent
from openmae.data.survey import Settings
from openmae.data.volumes import FileVolumes

MEMOS = ((volumes, "_HEADERS"), (survey, "_SURVEYED"), (survey, "_SURVEYS"))


def held_after_builds(files: list[Path], builds: int, bounded: bool) -> list[tuple[int, float, float]]:
    """(files in the build, MB held after it, seconds it took) for each build of a growing list."""
    saved = [getattr(module, name) for module, name in MEMOS]
    for module, name in MEMOS:  # fresh memos: the module's own bounds, or none
        setattr(module, name, Recent(getattr(module, name).size) if bounded else Recent(10**9))
    try:
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        rows = []
        for b in range(1, builds + 1):
            count = len(files) * b // builds
            start = time.perf_counter()
            built = FileVolumes(files[:count], None, 1, [], survey=Settings("zscore"))
            seconds = time.perf_counter() - start
            del built
            gc.collect()
            rows.append((count, (tracemalloc.get_traced_memory()[0] - base) / 2**20, seconds))
        tracemalloc.stop()
        return rows
    finally:
        for (module, name), memo in zip(MEMOS, saved, strict=True):
            setattr(module, name, memo)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/memobench")
    parser.add_argument("--files", type=int, default=8000)
    parser.add_argument("--builds", type=int, default=16)
    args = parser.parse_args()
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(args.files):
        path = root / f"{k // 1000:02d}" / f"{k:05d}.npy"
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            np.save(path, np.full((2, 8, 8), k % 17, np.float32))
        files.append(path)
    results = {way: held_after_builds(files, args.builds, way == "bounded") for way in ("unbounded", "bounded")}
    print(f"{'build':>5} {'files':>6} {'unbounded MB':>13} {'bounded MB':>11} {'unbounded s':>12} {'bounded s':>10}")
    for b, ((count, free_mb, free_s), (_, kept_mb, kept_s)) in enumerate(
            zip(results["unbounded"], results["bounded"], strict=True), 1):
        print(f"{b:>5} {count:>6} {free_mb:>13.1f} {kept_mb:>11.1f} {free_s:>12.2f} {kept_s:>10.2f}")


if __name__ == "__main__":
    main()
