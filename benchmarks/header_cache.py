"""What a run's start pays for the headers of a DICOM set stored a slice a file, in a new process each time (a run):
without ``data.volume_cache`` (every header parsed), with it the first time (parsed, then kept) and the next time
(a stat a file and one JSON record a folder). The slices are pydicom's ``CT_small.dcm`` written again with their own
series, instance numbers and positions, ``--per-series`` files to a folder; every way must give the same volumes.

    python benchmarks/header_cache.py --out /tmp/headerbench --files 6000 --per-series 100
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

TIMED = """
import json, sys, time
from pathlib import Path
from openmae.data.volumes import read_headers
files = sorted(Path(sys.argv[1]).rglob("*.dcm"))
start = time.perf_counter()
headers = read_headers(files, None, "axial", sys.argv[2], "volumes")
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "volumes": [(str(s.path), len(s.members)) for s in headers.scans]}))
"""


def write_series(root: Path, files: int, per_series: int) -> None:
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for k in range(files):
        series, number = divmod(k, per_series)
        if number == 0:
            uid = generate_uid()
            (root / f"series{series:04d}").mkdir(parents=True, exist_ok=True)
        template.SeriesInstanceUID, template.SOPInstanceUID = uid, generate_uid()
        template.InstanceNumber = number + 1
        template.ImagePositionPatient = [0.0, 0.0, float(number)]
        template.save_as(root / f"series{series:04d}" / f"{number:04d}.dcm")


def run(root: Path, cache: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", TIMED, str(root), cache], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/headerbench")
    parser.add_argument("--files", type=int, default=6000)
    parser.add_argument("--per-series", type=int, default=100)
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    write_series(out / "data", args.files, args.per_series)
    cache = out / "cache"
    rows = [("no data.volume_cache", run(out / "data", "")), ("data.volume_cache, first run", run(out / "data", str(cache))),
            ("data.volume_cache, next run", run(out / "data", str(cache)))]
    assert all(r["volumes"] == rows[0][1]["volumes"] for _, r in rows), "the ways gave different volumes"
    print(f"{args.files} DICOM slice files, {args.files // args.per_series} series; a new process each")
    print(f"{'':32s} {'seconds':>8s} {'ms a file':>10s}")
    for name, r in rows:
        print(f"{name:32s} {r['seconds']:8.2f} {1e3 * r['seconds'] / args.files:10.3f}")
    print(f"kept: {sum(1 for _ in cache.glob('headers-*.json'))} records, "
          f"{sum(p.stat().st_size for p in cache.glob('headers-*.json')) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
