"""A list of volume files built again, unchanged, with a survey setting (``data.volume_norm`` / ``min_foreground``):
what a run's later builds of its training data cost (the statistics, the kNN monitor). The headers come from the
process's memo, keyed by a stat of every file; the surveys came from memory volume by volume, each keyed by another
``lstat`` of its files and a resolution of its folder (an ``lstat`` of every folder on the way; before the
thirty-third session), and now come whole under the headers' key. The middle row is what a first build's keys cost
now (each folder resolved once a build). Timed from the page cache and with each ``stat`` / ``lstat`` delayed by
``--latency-ms`` (a sleep, as a network file system's round trip); every way's surveys must be equal.

    python benchmarks/volume_rebuild.py --out /tmp/rebuildbench --files 2000 --latency-ms 0 0.5
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from slow_stats import slow_stats

from openmae.data import survey
from openmae.data.survey import Settings
from openmae.data.volumes import FileVolumes

SETTINGS = Settings("zscore", foreground=0.5, min_foreground=0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/rebuildbench")
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 0.5])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(args.files):
        path = root / f"{k:05d}.npy"
        if not path.exists():
            volume = np.zeros((8, 16, 16), np.float32)
            volume[2:6, 4:12, 4:12] = 1.0 + k % 7
            np.save(path, volume)
        files.append(path)
    first = FileVolumes(files, None, 1, [], survey=SETTINGS)  # headers and surveys into this process's memory
    key = survey._key
    for latency in args.latency_ms:
        times: dict[str, list[float]] = {"each volume keyed, its folder resolved (before)": [],
                                         "each volume keyed, folders resolved once": [],
                                         "whole, under the headers' key (now)": []}
        calls = {name: 0 for name in times}
        for _ in range(args.repeats):
            for name in times:  # alternating, so that the machine's moments fall on each alike
                if "keyed" in name:
                    survey._SURVEYED.clear()  # each volume's survey still kept, under its own key
                if "before" in name:  # the folders resolved for each volume
                    survey._key = lambda scan, settings, folders=None: key(scan, settings)
                try:
                    with slow_stats(latency) as count:
                        start = time.perf_counter()
                        again = FileVolumes(files, None, 1, [], survey=SETTINGS)
                        times[name].append(time.perf_counter() - start)
                finally:
                    survey._key = key
                calls[name] = count[0]
                assert again.surveys == first.surveys
        for name, each in times.items():
            print(f"latency {latency:g} ms, {args.files} files, {name}: "
                  f"median {statistics.median(each) * 1e3 / args.files:.3f} ms a file "
                  f"({', '.join(f'{t:.2f}' for t in each)} s a build), "
                  f"{calls[name] / args.files:.2f} stat / lstat calls a file", flush=True)


if __name__ == "__main__":
    main()
