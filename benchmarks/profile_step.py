"""Where openmae's pretraining step spends its time: matmuls, attention, copies and casts, the optimizer and the
rest (element-wise work, norms), per step, with the costliest operators (CPU) or kernels (GPU; and how long the GPU
sat idle). The same step as `benchmarks/throughput.py` times (random images, 75% masking, fused AdamW).

    python benchmarks/profile_step.py --preset mae_vit_small_patch16 --batch 16
    python benchmarks/profile_step.py --preset mae_vit_base_patch16 --batch 256 --compile
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

import torch

from openmae.engine.benchmark import openmae_step, random_batch
from openmae.engine.host_memory import keep_freed_host_memory
from openmae.engine.step_profile import profile_step
from openmae.models.registry import model_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mae_vit_small_patch16")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--compile", nargs="?", const="model", choices=["model", "blocks"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    keep_freed_host_memory()  # as training and the throughput benchmark do
    cfg = model_config(args.preset)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    torch.manual_seed(0)
    imgs, noise = random_batch(cfg, args.batch, device)
    step = openmae_step(cfg, imgs, noise, dtype, device, bool(args.compile), args.compile or "model")
    result = profile_step(step, device, args.warmup, args.steps, args.top)
    print(json.dumps({"preset": args.preset, "batch": args.batch, "precision": args.precision,
                      "compile": args.compile, **asdict(result)}))
    print(f"{args.preset} batch {args.batch} {args.precision}{' compiled (' + args.compile + ')' if args.compile else ''}")
    print(result.table(), flush=True)


if __name__ == "__main__":
    main()
