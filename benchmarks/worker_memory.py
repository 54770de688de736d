"""The memory each loader worker of a pretraining run holds privately (not shared with the training process it was
forked from), sampled every half second from ``/proc/<pid>/smaps_rollup`` while an ``openmae pretrain`` runs on
CIFAR-10's JPEGs (an ImageFolder of 50,000 training files) with the debug model.

    python benchmarks/worker_memory.py --workers 2 --samples 20000 -- train.epochs=1

What a worker holds privately is what it copied of the training process's pages (objects whose reference counts or
garbage-collector headers it wrote) plus what it allocated itself (decoded images, its batches).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def private_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            return sum(int(line.split()[1]) for line in fh
                       if line.startswith(("Private_Dirty", "Private_Clean"))) / 1024
    except OSError:
        return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--samples", type=int, default=20000, help="data.max_samples")
    parser.add_argument("--data-root", default=os.environ.get("OPENMAE_DATA", "../shared/datasets"))
    parser.add_argument("settings", nargs="*", help="more settings for openmae pretrain")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "openmae", "pretrain", f"--data-root={args.data_root}", f"-o={out}",
               "model.name=mae_vit_debug_patch4_32", "data.name=cifar10", f"data.max_samples={args.samples}",
               f"data.num_workers={args.workers}", "train.batch_size=64", "train.epochs=1", "train.warmup_epochs=0",
               "train.progress=false", "train.tensorboard=false", "pretrain.vis_images=0",
               *args.settings]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        peak: dict[int, float] = {}
        last: dict[int, float] = {}
        start = time.perf_counter()
        while proc.poll() is None:
            for pid in children(proc.pid):
                last[pid] = private_mb(pid)
                peak[pid] = max(peak.get(pid, 0.0), last[pid])
            time.sleep(0.5)
        err = proc.stderr.read()
        if proc.returncode:
            sys.exit(err[-3000:])
    workers = sorted(peak, key=peak.get, reverse=True)[: args.workers]
    print(f"{time.perf_counter() - start:.0f} s; training process's children (loader workers): " + ", ".join(
        f"peak {peak[p]:.0f} MB private" for p in workers))


if __name__ == "__main__":
    main()
