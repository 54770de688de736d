"""What the training process pays to take one ready ``data.device_augment`` batch from a loader worker.

A worker's batch of planned crops holds every photo's JPEG bytes (a batch of 256 ImageNet photos: 27 MB). As a
list of planned crops, its numpy arrays are pickled through the queue's pipe and copied again on arrival; as one
:class:`PlannedBatch` (what ``collate`` builds), the bytes sit in one shared-memory block and only the lists cross.
One worker, already ahead (the training process sleeps between batches), so ``next()`` times the receiving only.

    python benchmarks/batch_transfer.py --images 256 --repeats 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from torch.utils.data import DataLoader, Dataset

from openmae.data.build import train_dataset
from openmae.data.config import DataConfig
from openmae.data.device import PlannedBatch, PlannedCrop

REPO = Path(__file__).resolve().parents[1]


class ReadyBatches(Dataset):
    """The same planned crops each time, as a list or packed."""

    def __init__(self, crops: list[PlannedCrop], packed: bool, count: int) -> None:
        self.crops, self.packed, self.count = crops, packed, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int):
        return PlannedBatch.pack(self.crops) if self.packed else list(self.crops)


def receive_ms(crops: list[PlannedCrop], packed: bool, repeats: int, pause: float) -> list[float]:
    loader = DataLoader(ReadyBatches(crops, packed, repeats + 1), batch_size=None, num_workers=1, prefetch_factor=2)
    stream = iter(loader)
    next(stream)  # the worker's start
    times = []
    for _ in range(repeats):
        time.sleep(pause)  # the worker gets ahead, as during a training step
        start = time.perf_counter()
        next(stream)
        times.append(1000 * (time.perf_counter() - start))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(os.environ.get("OPENMAE_DATA", REPO.parent / "shared" / "datasets"))
                                              / "imagenet-sample"))
    parser.add_argument("--images", type=int, default=256, help="photos in the batch")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2, help="both forms this many times, in turn")
    parser.add_argument("--pause", type=float, default=0.4, help="seconds between batches")
    args = parser.parse_args()
    cfg = DataConfig(name="folder", path=args.data, device_augment=True, max_samples=args.images)
    dataset, sampler = train_dataset(cfg, (224, 224), 3, batch_size=args.images, seed=0)
    crops = [dataset[item][0] for item in list(sampler)[: args.images]]
    megabytes = sum(c.image.data.size for c in crops) / 1e6
    for _ in range(args.rounds):
        for packed in (False, True):
            times = sorted(receive_ms(crops, packed, args.repeats, args.pause))
            print(json.dumps({"form": "one PlannedBatch" if packed else "list of planned crops", "images": len(crops),
                              "megabytes": round(megabytes, 1), "receive_ms_median": round(statistics.median(times), 2),
                              "receive_ms_p10": round(times[len(times) // 10], 2),
                              "receive_ms_p90": round(times[(9 * len(times)) // 10], 2), "load_avg": os.getloadavg()}),
                  flush=True)


if __name__ == "__main__":
    main()
