"""The training process's CPU time for one ``data.device_augment`` batch, the part that limits the GPU path.

1. Receiving it from a loader worker. A worker's batch of planned crops holds every photo's JPEG bytes (256
   ImageNet photos: 27 MB). As a list of planned crops, its numpy arrays are pickled through the queue's pipe and
   copied again on arrival; as one :class:`PlannedBatch` (what ``collate`` builds), the bytes sit in one
   shared-memory block and only the lists cross. One worker, already ahead (the training process sleeps between
   batches), so ``next()`` times the receiving only.
2. Dispatching the resize of its crops: crops of a few pixels, so that the arithmetic is negligible and what is
   left is the time spent calling operators (on a GPU, each call that computes is a kernel launch on top):
   torchvision's resize per crop (on a CPU its native uint8 kernel), the sequence it runs per crop off the CPU
   (cast, resize, clamp, round, cast back), and the batched resize (``resize_crops``).
3. Whether decoding lets another thread run (``DeviceAhead`` decodes the next batch in a thread): the batch's JPEGs
   decoded twice one after the other, then twice at once in two threads (here on the CPU's decoder).

    python benchmarks/device_stage.py --images 256 --repeats 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_jpeg

from openmae.data.build import train_dataset
from openmae.data.config import DataConfig
from openmae.data.device import PlannedBatch, PlannedCrop
from openmae.data.resize import resize_crops, resize_each
from openmae.engine.benchmark import time_interleaved

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


def resize_host_ms(count: int, repeats: int) -> dict[str, float]:
    """Median ms to resize ``count`` tiny crops (different sizes, every other one mirrored) three ways."""
    gen = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 12 + i % 5, 14 + i % 3), dtype=torch.uint8, generator=gen) for i in range(count)]
    crops = [im[:, 1:10, 2:12] for im in images]  # views, as the device stage crops
    flips = [i % 2 == 0 for i in range(count)]

    def torchvision_per_crop() -> torch.Tensor:  # the device stage's per-crop resize
        return resize_each(crops, (8, 8), flips)

    def off_cpu_sequence_per_crop() -> torch.Tensor:  # torchvision's steps for uint8 bicubic on a GPU
        out = []
        for c, f in zip(crops, flips, strict=True):
            x = F.interpolate(c.unsqueeze(0).float(), size=[8, 8], mode="bicubic", antialias=True)
            x = x.clamp_(0, 255).round_().to(torch.uint8)[0]
            out.append(x.flip(-1) if f else x)
        return torch.stack(out).float()

    def batched() -> torch.Tensor:
        return resize_crops(crops, (8, 8), flips)

    seconds = time_interleaved({f.__name__: f for f in (torchvision_per_crop, off_cpu_sequence_per_crop, batched)},
                               torch.device("cpu"), 3, repeats)
    return {name: round(1000 * s, 2) for name, s in seconds.items()}


def decode_threads_ms(crops: list[PlannedCrop]) -> dict[str, float]:
    """Two decodes of the batch's JPEGs, one after the other and in two threads at once (median of three)."""
    datas = [torch.from_numpy(c.image.data) for c in crops if c.image.encoded]

    def decode() -> None:
        decode_jpeg(datas, mode=ImageReadMode.RGB)

    def in_threads() -> None:
        threads = [threading.Thread(target=decode) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    seconds = time_interleaved({"one_after_the_other": lambda: (decode(), decode()), "two_threads": in_threads},
                               torch.device("cpu"), 1, 3)
    return {name: round(1000 * s, 1) for name, s in seconds.items()}


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
    torch.set_num_threads(1)
    print(json.dumps({"part": "resize dispatch", "crops": args.images, "ms": resize_host_ms(args.images, args.repeats),
                      "load_avg": os.getloadavg()}), flush=True)
    print(json.dumps({"part": "decode in threads", "images": len(crops), "ms": decode_threads_ms(crops),
                      "load_avg": os.getloadavg()}), flush=True)
    for _ in range(args.rounds):
        for packed in (False, True):
            times = sorted(receive_ms(crops, packed, args.repeats, args.pause))
            print(json.dumps({"part": "receive", "form": "one PlannedBatch" if packed else "list of planned crops", "images": len(crops),
                              "megabytes": round(megabytes, 1), "receive_ms_median": round(statistics.median(times), 2),
                              "receive_ms_p10": round(times[len(times) // 10], 2),
                              "receive_ms_p90": round(times[(9 * len(times)) // 10], 2), "load_avg": os.getloadavg()}),
                  flush=True)


if __name__ == "__main__":
    main()
