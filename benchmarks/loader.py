"""Data-loading throughput: decode + RandomResizedCrop(224, 0.2-1, bicubic) + flip + normalise, in images/s,
for 0..N loader workers, on the real ImageNet sample photos (full-size JPEGs, some grayscale).
``--device-augment`` times the split path instead: workers read files and draw crops, the device decodes
(batched decode_jpeg) and augments; the time includes that device work.

    python benchmarks/loader.py --workers 0 1 2 --size 224 --images 400
    python benchmarks/loader.py --workers 4 15 --device-augment --device cuda
    python benchmarks/loader.py --workers 15 --device-augment --device cuda --resize per-image --profile 5
    python benchmarks/loader.py --workers 15 --device-augment --worker-decode --device cuda
    python benchmarks/loader.py --workers 2 --data photos --no-draft   # large JPEGs decoded at full size
    python benchmarks/loader.py --workers 0 2 --data runs/band_tiles --format array --bands 13   # multi-band arrays

Each row also splits the training process's time: waiting for the next batch against the device stage (decode,
resize, normalise, synchronised); whichever dominates is the limit. With workers, the device stage runs a batch
ahead in a thread as in training (``DeviceAhead``; ``--no-ahead``: in line), so the wait includes it. ``--resize`` chooses the device
stage's resize (default: batched products on a GPU, each crop alone on a CPU); ``--profile N`` prints where N
batches' device stage spends its time (``torch.profiler``, CPU and GPU); ``--worker-decode`` has the workers decode
and crop the JPEGs (``data.device_decode=false``, for GPUs without a hardware JPEG decoder). ``--no-draft``: the CPU
path (and ``--worker-decode``) decodes every JPEG at full size (``data.jpeg_draft=false``), not at the reduced
scale a large photo's crop allows.

``--epochs N`` times epoch boundaries instead: a stand-in training loop (each batch then ``--step-ms`` of
sleep, as a process waiting on its GPU would; ``--pause-ms`` at each epoch's end, for evaluation and checkpoints)
runs N short epochs once with a new loader iterator per epoch and once with one iterator spanning them (what the
training loop does); it reports the wait for each epoch's first batch and the wall time.

    python benchmarks/loader.py --workers 2 --epochs 6 --images 128 --step-ms 100 --pause-ms 500
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from openmae.data.ahead import DeviceAhead
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
    parser.add_argument("--no-ahead", dest="ahead", action="store_false",
                        help="with --device-augment and workers: the device stage in line instead of in a thread")
    parser.add_argument("--worker-decode", action="store_true",
                        help="with --device-augment: the workers decode JPEGs (data.device_decode=false)")
    parser.add_argument("--jpeg-decoder", choices=["auto", "torchvision", "torchcodec"], default="auto",
                        help="with --device-augment: the batched JPEG decoder (data.jpeg_decoder)")
    parser.add_argument("--no-draft", dest="draft", action="store_false",
                        help="the CPU path (or --worker-decode) decodes every JPEG at full size (data.jpeg_draft=false)")
    parser.add_argument("--format", choices=["image", "array"], default="image",
                        help="data.format: array reads .npy / TIFF files of --bands bands (benchmarks/make_band_tiles.py)")
    parser.add_argument("--bands", type=int, default=3, help="with --format array: the bands a file holds")
    parser.add_argument("--resize", choices=["auto", "batched", "per-image"], default="auto",
                        help="with --device-augment: the device stage's resize (auto: batched on a GPU)")
    parser.add_argument("--profile", type=int, default=0, help="with --device-augment: profile N batches' device stage")
    parser.add_argument("--epochs", type=int, default=0, help="time N epoch boundaries (see above) instead")
    parser.add_argument("--step-ms", type=float, default=100.0, help="with --epochs: the stand-in step's time")
    parser.add_argument("--pause-ms", type=float, default=500.0, help="with --epochs: the pause after each epoch")
    args = parser.parse_args()
    device = torch.device(args.device)

    def finish(dataset, batch):  # dataset None: the batch is on the device already (DeviceAhead)
        images = (batch if dataset is None else dataset.to_device(batch, device)).images
        if device.type == "cuda":
            torch.cuda.synchronize()
        return images.shape[0]

    if args.epochs:
        boundaries(args, finish)
        return

    rows = []
    for workers in args.workers:
        cfg = DataConfig(name="folder", path=args.data, max_samples=args.images, num_workers=workers,
                         device_augment=args.device_augment, repeat=args.repeat,
                         device_decode=not (args.device_augment and args.worker_decode), jpeg_draft=args.draft,
                         jpeg_decoder=args.jpeg_decoder, format=args.format, **stand_in_stats(args))
        dataset, sampler = train_dataset(cfg, (args.size, args.size), args.bands, args.batch, seed=0)
        if args.device_augment and args.resize != "auto":
            dataset.device_stage.batched_resize = args.resize == "batched"
        loader = make_loader(dataset, sampler, workers, pin_memory=device.type == "cuda")
        stream = iter(loader)
        finish(dataset, next(stream))  # start the workers (and the device's decoder)
        if args.device_augment and args.profile:
            profile(dataset, [next(stream) for _ in range(args.profile)], finish, device)
        ahead = args.device_augment and args.ahead and workers > 0
        if ahead:  # as the training loop: the next batch's device stage in a thread
            stream = DeviceAhead(stream, dataset, device)
        start, seen, waited, staged, batches = time.perf_counter(), 0, 0.0, 0.0, 0
        while True:
            asked = time.perf_counter()
            batch = next(stream, None)
            if batch is None:
                break
            got = time.perf_counter()
            seen += finish(None if ahead else dataset, batch)
            waited, staged, batches = waited + got - asked, staged + time.perf_counter() - got, batches + 1
        seconds = time.perf_counter() - start
        rows.append({"workers": workers, "format": args.format, "bands": args.bands,
                     "device_augment": args.device_augment, "device": args.device,
                     "jpeg_draft": args.draft and args.format == "image" and (args.worker_decode or not args.device_augment),
                     "resize": args.resize if args.device_augment else None, "ahead": ahead,
                     "decode": ("workers" if args.worker_decode else "device") if args.device_augment else "workers",
                     "jpeg_decoder": args.jpeg_decoder if args.device_augment and not args.worker_decode else None,
                     "images_per_s": round(seen / seconds, 1),
                     "per_worker": round(seen / seconds / max(workers, 1), 1), "images": seen,
                     "wait_ms_per_batch": round(1000 * waited / max(batches, 1), 1),
                     "device_stage_ms_per_batch": round(1000 * staged / max(batches, 1), 1)})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"size": args.size, "cpu_count": os.cpu_count(), "load_avg": os.getloadavg(), "rows": rows}))


def stand_in_stats(args: argparse.Namespace) -> dict:
    """Arrays: a fixed mean / std per band (measuring them would read the files before the timing starts)."""
    return {"mean": (30000.0,) * args.bands, "std": (15000.0,) * args.bands} if args.format == "array" else {}


def profile(dataset, batches: list, finish, device: torch.device) -> None:
    """The device stage of ``batches`` under ``torch.profiler``: its costliest operators by own CPU time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for batch in batches:
            finish(dataset, batch)
    print(f"## device stage of {len(batches)} batches, own time by operator", flush=True)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15), flush=True)
    events = prof.events()
    top = sum(1 for e in events if e.cpu_parent is None and e.device_type == DeviceType.CPU and e.name.startswith("aten::"))
    kernels = sum(1 for e in events if e.device_type == DeviceType.CUDA)
    print(f"operators called by the device stage: {top / len(batches):.0f} a batch (top level); "
          f"GPU kernels: {kernels / len(batches):.0f} a batch", flush=True)


def boundaries(args: argparse.Namespace, finish) -> None:
    """Wait for each epoch's first batch, per-epoch iterators against one iterator spanning the epochs."""
    for workers in args.workers:
        for span in (False, True):
            cfg = DataConfig(name="folder", path=args.data, max_samples=args.images, num_workers=workers,
                             device_augment=args.device_augment, repeat=args.repeat)
            dataset, sampler = train_dataset(cfg, (args.size, args.size), 3, args.batch, seed=0)
            loader = make_loader(dataset, sampler, workers, pin_memory=False)
            waits, stream, start = [], None, time.perf_counter()
            for epoch in range(args.epochs):
                if stream is None or not span:
                    sampler.set_position(epoch, 0, args.epochs if span else None)
                    stream = iter(loader)
                for i in range(sampler.batches_per_epoch):
                    asked = time.perf_counter()
                    batch = next(stream)
                    if i == 0:
                        waits.append(time.perf_counter() - asked)
                    finish(dataset, batch)
                    time.sleep(args.step_ms / 1000)
                time.sleep(args.pause_ms / 1000)
            later = waits[1:]  # the first epoch's wait is the workers' start-up in both modes
            print(json.dumps({"workers": workers, "iterator": "one for all epochs" if span else "one per epoch",
                              "first_batch_wait_ms_after_a_boundary": round(1000 * sum(later) / len(later), 1),
                              "first_epoch_wait_ms": round(1000 * waits[0], 1),
                              "wall_s": round(time.perf_counter() - start, 2), "epochs": args.epochs,
                              "batches_per_epoch": sampler.batches_per_epoch, "size": args.size,
                              "load_avg": os.getloadavg()}), flush=True)


if __name__ == "__main__":
    main()
