"""Data-loading throughput: decode + RandomResizedCrop(224, 0.2-1, bicubic) + flip + normalise, in images/s,
for 0..N loader workers, on the real ImageNet sample photos (full-size JPEGs, some grayscale).
``--device-augment`` times the split path instead: workers read files and draw crops, the device decodes
(batched decode_jpeg) and augments; the time includes that device work.

    python benchmarks/loader.py --workers 0 1 2 --size 224 --images 400
    python benchmarks/loader.py --workers 4 15 --device-augment --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from openmae.data.build import train_dataset
from openmae.data.config import DataConfig
from openmae.data.loader import make_loader

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(os.environ.get("OPENMAE_DATA", REPO.parent / "shared" / "datasets"))
                                              / "imagenet-sample"))
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=1, help="go over the photos this many times (data.repeat)")
    parser.add_argument("--device-augment", action="store_true", help="decode and augment on --device")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    def finish(dataset, batch):
        images = dataset.to_device(batch, device).images
        if device.type == "cuda":
            torch.cuda.synchronize()
        return images.shape[0]

    rows = []
    for workers in args.workers:
        cfg = DataConfig(name="folder", path=args.data, max_samples=args.images, num_workers=workers,
                         device_augment=args.device_augment, repeat=args.repeat)
        dataset, sampler = train_dataset(cfg, (args.size, args.size), 3, args.batch, seed=0)
        loader = make_loader(dataset, sampler, workers, pin_memory=False)
        finish(dataset, next(iter(loader)))  # start the workers (and the device's decoder)
        start, seen = time.perf_counter(), 0
        for batch in loader:
            seen += finish(dataset, batch)
        seconds = time.perf_counter() - start
        rows.append({"workers": workers, "device_augment": args.device_augment, "device": args.device,
                     "images_per_s": round(seen / seconds, 1),
                     "per_worker": round(seen / seconds / max(workers, 1), 1), "images": seen})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"size": args.size, "cpu_count": os.cpu_count(), "load_avg": os.getloadavg(), "rows": rows}))


if __name__ == "__main__":
    main()
