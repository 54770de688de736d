"""Pretraining-step throughput, FLOPs and MFU of openmae against Hugging Face and an eager fp32 reference.

    python benchmarks/throughput.py                       # the CPU suite (ViT-S/16 at 224, ViT-T/4 at 32)
    python benchmarks/throughput.py --preset mae_vit_large_patch16 --batch 128 --precision bf16 --compile
    python benchmarks/throughput.py --compile --with-eager   # the CPU suite, openmae compiled and eager in one run

Prints one JSON object per configuration and a table with the ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import json

from openmae.engine.benchmark import benchmark, table
from openmae.engine.config import COMPILE_MODES

CPU_SUITE = [("mae_vit_small_patch16", 16), ("mae_vit_tiny_patch4_32", 128)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", help="one preset instead of the CPU suite")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--compile", nargs="?", const="model", choices=["model", "blocks"],
                        help="torch.compile the whole forward (model, the default) or each block (blocks)")
    parser.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                        help="torch.compile mode; reduce-overhead replays the step as CUDA graphs on a GPU")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-hf", action="store_true", help="skip Hugging Face")
    parser.add_argument("--no-reference", action="store_true", help="skip the eager (official-style) reference")
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--with-eager", action="store_true",
                        help="with --compile: openmae's eager step as one more row of the same run")
    parser.add_argument("--with-checkpointing", action="store_true",
                        help="openmae's eager step with activation checkpointing as one more row of the same run "
                             "(peak memory per image with and without it)")
    args = parser.parse_args()
    suite = [(args.preset, args.batch)] if args.preset else CPU_SUITE
    for preset, batch in suite:
        result = benchmark(preset, batch, args.precision, bool(args.compile), not args.no_hf, not args.no_reference,
                           warmup=args.warmup, steps=args.steps, grad_checkpointing=args.grad_checkpointing,
                           compile_scope=args.compile or "model", compile_mode=args.compile_mode,
                           eager_too=args.with_eager, checkpointed_too=args.with_checkpointing)
        print(json.dumps(result))
        print(table(result), flush=True)


if __name__ == "__main__":
    main()
