"""Time and peak memory of the kNN's neighbour search at ImageNet's scale (random features: the search's cost does not
depend on what they are): ``--queries`` test features against ``--train`` training features of width ``--dim``, k 20,
1,000 classes, on the CPU or a GPU (``openmae.eval.knn.search_device``).

    python benchmarks/knn_search.py                          # the CPU: 1,024 queries against 1,281,167 (minutes)
    python benchmarks/knn_search.py --similarity-gb 1e3      # chunks of 1,024 queries whatever the training count
    python benchmarks/knn_search.py --device cuda --queries 50000   # ImageNet's whole validation split on a GPU
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from openmae.eval import knn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=1_281_167)
    ap.add_argument("--queries", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--similarity-gb", type=float, default=knn.SIMILARITY_BYTES / 2**30,
                    help="knn.SIMILARITY_BYTES in GiB (the most one chunk's similarities take)")
    args = ap.parse_args()
    knn.SIMILARITY_BYTES = int(args.similarity_gb * 2**30)
    torch.manual_seed(0)
    train, labels = torch.randn(args.train, args.dim), torch.randint(0, 1000, (args.train,))
    test = torch.randn(args.queries, args.dim)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    device = knn.search_device(train, args.device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    scores = knn.knn_predict(train, labels, test, 1000, k=20, device=device)  # (queries, 1000) on the CPU
    seconds = time.perf_counter() - start
    print(json.dumps({
        "train": args.train, "queries": args.queries, "dim": args.dim, "device": str(device),
        "rows_a_chunk": knn.chunk_rows(1024, args.train), "seconds": round(seconds, 2),
        "queries_per_s": round(args.queries / seconds, 1), "scores": list(scores.shape),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
        "rss_gb_before_search": round(before, 2),
        "peak_gpu_gb": round(torch.cuda.max_memory_allocated(device) / 1e9, 2) if device.type == "cuda" else None}))


if __name__ == "__main__":
    main()
