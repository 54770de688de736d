"""Time of the patch-distance search (`visualize --distances`, `evaluate.reference_images`) at ImageNet's scale, on
the device it runs on: a ViT-B/16 MAE's patch tokens of ``--reference`` images (196 each: 196,000 for 1,000) as the
bank, its greedy coreset (``--coreset``), and the search of ``--queries`` images' patches; and the distances of the
first ``--check`` query images computed again on the CPU (the same within float32's rounding). Random weights and
images: the search's cost does not depend on what they are.

    python benchmarks/distance_search.py --device cuda                 # a GPU (benchmarks/gpu_check.sh, part dist)
    python benchmarks/distance_search.py --preset mae_vit_debug_patch4_32 --reference 20 --queries 10   # a quick look
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import openmae
from openmae.eval.feature_map import patch_tokens
from openmae.eval.patch_distance import bank_from, patch_distances, search_device

BATCH = 64


def timed(device: torch.device, work):
    """(seconds, result) of ``work()``, the device synchronised before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    began = time.perf_counter()
    out = work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - began, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="mae_vit_base_patch16")
    ap.add_argument("--reference", type=int, default=1000, help="reference images")
    ap.add_argument("--queries", type=int, default=1000, help="images searched")
    ap.add_argument("--coreset", type=float, default=0.1, help="the coreset's share of the reference's tokens")
    ap.add_argument("--check", type=int, default=4, help="query images computed again on the CPU")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = openmae.create_model(args.preset).to(device).eval()
    m = model.cfg

    def images(count: int, seed: int) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        return [torch.randn(min(BATCH, count - i), m.in_chans, *m.img_size, generator=gen) for i in range(0, count, BATCH)]

    with torch.no_grad():
        read_s, tokens = timed(device, lambda: torch.cat([patch_tokens(model, b) for b in images(args.reference, 0)]))
        where = search_device(tokens[..., 0].numel(), tokens.shape[-1], model)
        whole_s, bank = timed(device, lambda: bank_from(tokens.to(where)))
        core_s, core = timed(device, lambda: bank_from(tokens.to(where), keep=args.coreset))
        queries = images(args.queries, 1)
        search_s, maps = timed(device, lambda: torch.cat([patch_distances(model, q, bank) for q in queries]))
        core_search_s, _ = timed(device, lambda: torch.cat([patch_distances(model, q, core) for q in queries]))
        encode_s, _ = timed(device, lambda: [patch_tokens(model, q) for q in queries])  # the encoder's share
        first = queries[0][: args.check]
        cpu_maps = patch_distances(model.cpu(), first, bank.to(torch.device("cpu")))
    print(json.dumps({
        "preset": args.preset, "device": str(device), "bank_device": str(bank.tokens.device),
        "reference_images": args.reference, "bank_tokens": len(bank.tokens), "width": bank.tokens.shape[1],
        "coreset_tokens": len(core.tokens), "query_images": args.queries,
        "reference_read_s": round(read_s, 2), "bank_s": round(whole_s, 2), "coreset_s": round(core_s, 2),
        "search_s": round(search_s, 2), "coreset_search_s": round(core_search_s, 2), "encoder_s": round(encode_s, 2),
        "images_per_s": round(args.queries / search_s, 1),
        "cpu_check_max_abs_diff": float((maps[: args.check] - cpu_maps).abs().max()),
        "peak_gpu_gb": round(torch.cuda.max_memory_allocated(device) / 1e9, 2) if device.type == "cuda" else None}))


if __name__ == "__main__":
    main()
