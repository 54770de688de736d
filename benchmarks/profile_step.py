"""Where openmae's pretraining step spends its time: matmuls, attention, copies and casts, the optimizer and the
rest (element-wise work, norms), per step, with the costliest operators (CPU) or kernels (GPU; and how long the GPU
sat idle). The same step as `benchmarks/throughput.py` times (random images, 75% masking, fused AdamW).

    python benchmarks/profile_step.py --preset mae_vit_small_patch16 --batch 16
    python benchmarks/profile_step.py --preset mae_vit_base_patch16 --batch 256 --compile
    python benchmarks/profile_step.py --preset mae_vit_large_patch16 --batch 256 --compile --compile-mode reduce-overhead
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from openmae.engine.config import COMPILE_MODES
from openmae.engine.step_profile import profile_preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mae_vit_small_patch16")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--compile", nargs="?", const="model", choices=["model", "blocks"])
    parser.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                        help="torch.compile mode; reduce-overhead replays the step as CUDA graphs on a GPU")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--grad-checkpointing", action="store_true")
    args = parser.parse_args()
    result = profile_preset(args.preset, args.batch, args.precision, bool(args.compile), args.compile or "model",
                            args.grad_checkpointing, warmup=args.warmup, steps=args.steps, top=args.top,
                            compile_mode=args.compile_mode)
    print(json.dumps({"preset": args.preset, "batch": args.batch, "precision": args.precision,
                      "compile_mode": args.compile_mode, **asdict(result)}))
    print(result.table(), flush=True)


if __name__ == "__main__":
    main()
