"""A per-volume survey's key (``openmae.data.survey._key``: the name of its file in ``data.volume_cache``) for a DICOM
series stored a file a slice, deep in a folder tree: each file resolved (``Path.resolve``: an ``lstat`` of every
folder on the way and a ``stat`` of the file, then two more ``stat``s for its size and time; the code before the
thirty-second session) against each folder resolved once and one ``lstat`` a file (now), from the page cache and
with each ``stat`` / ``lstat`` delayed by ``--latency-ms`` (a sleep, as a network file system's round trip). The two
keys are printed: they must be equal.

    python benchmarks/survey_keys.py --out /tmp/keybench --files 500 --latency-ms 0 0.5
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

from slow_stats import slow_stats

from openmae.data.survey import Settings, _key


def by_resolving(scan, settings: Settings) -> str:
    """The key as it was computed before: each file resolved."""
    files = scan.members or (scan.path,)
    stamps = [(str(Path(f).resolve()), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
    what = repr((stamps, scan.kind, scan.axis, scan.rows, scan.cols, scan.volume, scan.samples, asdict(settings)))
    return hashlib.sha1(what.encode()).hexdigest()[:20]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/keybench")
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 0.5])
    args = parser.parse_args()
    root = Path(args.out) / "project" / "data" / "ct" / "patient0001" / "study1" / "series1"
    root.mkdir(parents=True, exist_ok=True)
    members = []
    for k in range(args.files):
        path = root / f"IM{k:05d}.dcm"
        if not path.exists():
            path.write_bytes(b"x")
        members.append(path)
    scan = SimpleNamespace(path=members[0], members=tuple(members), kind="series", axis=0, rows=1, cols=2, volume=0,
                           samples=1)
    settings = Settings("zscore")
    for latency in args.latency_ms:
        for name, fn in (("each file resolved (before)", by_resolving), ("each folder once (now)", _key)):
            with slow_stats(latency) as calls:
                start = time.perf_counter()
                key = fn(scan, settings)
                took = time.perf_counter() - start
            print(f"latency {latency:g} ms, {name}: {took * 1e3 / len(members):.3f} ms a file, "
                  f"{calls[0] / len(members):.1f} stat / lstat calls a file, key {key}", flush=True)


if __name__ == "__main__":
    main()
