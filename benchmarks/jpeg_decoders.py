"""torchvision's and TorchCodec's batched ``decode_jpeg`` side by side (``data.jpeg_decoder``): the same batch of
photos decoded by each in turn, on ``--device`` (nvJPEG on CUDA), median of ``--repeats`` after one untimed call;
and whether they give the same pixels (count of equal images, largest difference).

    python benchmarks/jpeg_decoders.py --data ../shared/datasets/imagenet-sample --images 256 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from openmae.data.jpeg import jpeg_decoder

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(os.environ.get("OPENMAE_DATA", REPO.parent / "shared" / "datasets"))
                                              / "imagenet-sample"))
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    files = sorted(p for p in Path(args.data).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))[: args.images]
    datas = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in files]
    decoded, rows = {}, []
    for name in ("torchvision", "torchcodec"):
        decode = jpeg_decoder(name)
        decoded[name] = decode(datas, mode="RGB", device=device)  # untimed: the decoder's start-up
        times = []
        for _ in range(args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            decode(datas, mode="RGB", device=device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        rows.append({"decoder": name, "device": str(device), "images": len(datas),
                     "ms_per_batch": round(1000 * seconds, 1), "images_per_s": round(len(datas) / seconds, 1)})
        print(json.dumps(rows[-1]), flush=True)
    pairs = list(zip(decoded["torchvision"], decoded["torchcodec"], strict=True))
    equal = sum(torch.equal(a, b) for a, b in pairs)
    largest = max(int((a.int() - b.int()).abs().max()) if a.shape == b.shape else 255 for a, b in pairs)
    print(json.dumps({"equal_images": equal, "of": len(pairs), "largest_difference": largest,
                      "torchcodec_over_torchvision": round(rows[0]["ms_per_batch"] / rows[1]["ms_per_batch"], 2)}))


if __name__ == "__main__":
    main()
