"""Reading the headers of a DICOM series stored a slice a file (building ``data.format=volume`` sources) in this
process, on eight threads, and in forked processes (``read_headers``: one a core once the first files predict more
than ``openmae.data.ranks.POOL_AFTER_S`` seconds), from the page cache and with each file's reading delayed by
``--latency-ms`` (a sleep before the read, which waits as a network file system's round trips do: the GIL
released). Each file is pydicom's ``CT_small.dcm`` with another position along the slices' normal and its own
instance UID.

    python benchmarks/volume_headers.py --out runs/volume_headers --files 2000 --latency-ms 0 2 --rounds 3
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from openmae.data import ranks
from openmae.data import volumes as volumes_module
from openmae.data.volumes import read_headers

SETTINGS = {"one process": {"processes": False}, "eight threads": {"threads": 8, "processes": False},
            "processes (read_headers)": {}}  # shared_map's arguments, over read_headers' own


def write_series(out: Path, count: int) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series = generate_uid(entropy_srcs=["openmae benchmarks volume_headers"])  # the same on every call
    files = []
    for k in range(count):
        path = out / f"slice{k:05d}.dcm"
        if not path.is_file():
            ds.SeriesInstanceUID, ds.SOPInstanceUID = series, generate_uid()
            ds.ImagePositionPatient = [0.0, 0.0, float(k)]
            ds.InstanceNumber = k + 1
            ds.save_as(path)
        files.append(path)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/volume_headers")
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 2.0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    files = write_series(Path(args.out), args.files)
    scan = volumes_module.scan_volume
    shared_map = ranks.shared_map
    print(f"{len(files)} DICOM slice files, {ranks.pool_size()} cores; ms a file (each round's), then the median")
    for latency in args.latency_ms:
        volumes_module.scan_volume = lambda *a, lat=latency / 1e3: time.sleep(lat) or scan(*a)
        times: dict[str, list[float]] = {name: [] for name in SETTINGS}
        for _ in range(args.rounds):
            for name, setting in SETTINGS.items():  # alternating, so that the machine's moments fall on each alike
                volumes_module.shared_map = lambda *a, setting=setting, **k: shared_map(*a, **{**k, **setting})
                volumes_module._HEADERS.clear()
                start = time.perf_counter()
                (volume,), _, failed, _ = read_headers(files, None, "axial", "", "volumes")
                times[name].append((time.perf_counter() - start) / len(files) * 1e3)
                assert volume.slices == len(files) and not failed
        for name, each in times.items():
            print(f"latency {latency:g} ms, {name}: {', '.join(f'{t:.2f}' for t in each)}; "
                  f"median {sorted(each)[len(each) // 2]:.2f} ms a file", flush=True)
    volumes_module.scan_volume = scan
    volumes_module.shared_map = shared_map


if __name__ == "__main__":
    main()
