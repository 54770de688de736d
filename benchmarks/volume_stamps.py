"""The sizes and times of a volume dataset's files, which key the headers ``read_headers`` keeps per process
(``file_stamps``): a stat a file, one after the other (the loop before ``file_stamps``), against ``file_stamps``'s
chunks on one thread, on ``STAMP_THREADS`` threads always, and as it chooses (threads where its first stats are
slow), from the page cache and with each stat delayed by ``--latency-ms`` (a sleep before it, which waits as a
network file system's round trip does: the GIL released). Under torchrun each rank stats its share of the chunks
and the ranks exchange digests; the time printed is rank 0's. The files are empty: a stat does not read them.

    python benchmarks/volume_stamps.py --out runs/volume_stamps --files 250000 --latency-ms 0 --rounds 3
    python benchmarks/volume_stamps.py --out runs/volume_stamps --files 20000 --latency-ms 0.5 --rounds 3
    torchrun --standalone --nproc_per_node=2 benchmarks/volume_stamps.py --files 20000 --latency-ms 0.5
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import time
import types
from pathlib import Path

from openmae.data import stamps as stamps_module
from openmae.data.filelist import FileList
from openmae.data.ranks import shared_by_ranks
from openmae.data.stamps import file_stamps


def one_by_one(files: FileList) -> str:
    """The loop ``read_headers`` ran before ``file_stamps``: every file on every rank, one after the other."""
    stamps = hashlib.sha1()
    for path in files:
        with contextlib.suppress(OSError):  # a missing file: its error came from reading it
            stat = stamps_module.os.stat(path)
            stamps.update(f"{stat.st_size},{stat.st_mtime_ns};".encode())
    return stamps.hexdigest()


def write_files(out: Path, count: int) -> FileList:
    out.mkdir(parents=True, exist_ok=True)
    have = {entry.name for entry in os.scandir(out)}
    names = [f"slice{k:06d}.dcm" for k in range(count)]
    for name in names:
        if name not in have:
            (out / name).touch()
    return FileList(out / name for name in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/volume_stamps")
    parser.add_argument("--files", type=int, default=250_000)
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rank, world = 0, 1
    if "WORLD_SIZE" in os.environ:
        import torch.distributed as dist

        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    files = write_files(Path(args.out), args.files) if rank == 0 else FileList()
    if world > 1:
        dist.barrier()
        files = write_files(Path(args.out), args.files)
    default = {"STAMP_THREADS": stamps_module.STAMP_THREADS, "STAMP_SLOW_S": stamps_module.STAMP_SLOW_S}
    settings = {"one by one": (one_by_one, default), "file_stamps, one thread": (file_stamps, {"STAMP_THREADS": 1}),
                f"file_stamps, {default['STAMP_THREADS']} threads always": (file_stamps, {"STAMP_SLOW_S": 0.0}),
                "file_stamps (threads where the first stats are slow)": (file_stamps, {})}
    if rank == 0:
        print(f"{len(files)} files, {world} rank(s); ms a thousand files (each round's), then the median")
    for latency in args.latency_ms:
        stamps_module.os = types.SimpleNamespace(stat=lambda p, lat=latency / 1e3: (time.sleep(lat) if lat else None)
                                                  or os.stat(p))
        times: dict[str, list[float]] = {name: [] for name in settings}
        digests: dict[str, str] = {}
        for _ in range(args.rounds):
            for name, (fn, setting) in settings.items():  # alternating: the machine's moments fall on each alike
                for attribute, value in {**default, **setting}.items():
                    setattr(stamps_module, attribute, value)
                if world > 1:
                    dist.barrier()
                start = time.perf_counter()
                with shared_by_ranks(rank, world):
                    digests[name] = fn(files)
                times[name].append((time.perf_counter() - start) / len(files) * 1e6)
        for name, each in times.items():
            if rank == 0:
                print(f"latency {latency:g} ms, {name}: {', '.join(f'{t:.1f}' for t in each)}; "
                      f"median {sorted(each)[len(each) // 2]:.1f} ms a thousand files", flush=True)
        assert len(set(list(digests.values())[1:])) == 1  # file_stamps gives one digest however it is run
    stamps_module.os = os
    for attribute, value in default.items():
        setattr(stamps_module, attribute, value)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
