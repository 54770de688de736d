"""Forward + backward time of SDPA's flash and math kernels for the attention shapes MAE trains with, in timm's
layout (one qkv projection, permuted views), on this machine's CPU (or GPU). In bf16 two more columns: the flash
kernel run in fp32 on the same bf16 tensors (q, k, v cast up, the output cast back, casts included), and timm's
explicit attention (its fused_attn=False branch: bf16 matmuls around a softmax). This script is how
`openmae.models.attention` chose a CPU's kernel and precision for each sequence length.

    python benchmarks/attention_kernels.py                  # bf16 on the CPU
    python benchmarks/attention_kernels.py --precision fp32
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# (batch, heads, tokens, head width): ViT-T/4 at 32px (encoder, decoder), ViT-S/16 at 224 (encoder, decoder), sizes
# between, and longer sequences (ViT-H/14's decoder at 224: 257 tokens; /16 at 384: 577)
SHAPES = [(128, 3, 17, 64), (128, 4, 65, 32), (16, 6, 50, 64), (32, 16, 82, 32), (32, 16, 101, 32), (64, 6, 100, 64),
          (32, 8, 128, 64), (32, 16, 145, 32), (16, 16, 197, 32), (16, 12, 197, 64), (8, 6, 197, 64), (16, 16, 257, 32),
          (4, 16, 577, 32), (8, 12, 577, 64)]


def fwd_bwd_ms(shape: tuple[int, int, int, int], backend: SDPBackend | None, dtype: torch.dtype, device: torch.device,
               repeats: int, core_dtype: torch.dtype | None = None) -> float:
    """``backend`` None: timm's explicit attention instead of SDPA. ``core_dtype``: the dtype the kernel runs in
    (q, k, v cast to it, the output cast back); default ``dtype``."""
    b, h, n, d = shape
    qkv = torch.randn(b, n, 3 * h * d, dtype=dtype, device=device, requires_grad=True)

    def once() -> None:
        q, k, v = qkv.reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, d) views, as timm
        if core_dtype is not None:
            q, k, v = q.to(core_dtype), k.to(core_dtype), v.to(core_dtype)
        if backend is None:
            out = ((q * d**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1) @ v  # (B, H, N, d)
        else:
            with sdpa_kernel([backend]):
                out = F.scaled_dot_product_attention(q, k, v).to(dtype)
        out.transpose(1, 2).reshape(b, n, h * d).sum().backward()

    for _ in range(2):
        once()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        once()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()
    dtype, device = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.precision], torch.device(args.device)
    up = dtype == torch.bfloat16
    print("| batch | heads | tokens | head width | flash ms | math ms | math speed-up |"
          + (" fp32 flash on bf16 ms | its speed-up over the faster bf16 kernel | explicit bf16 ms | explicit's "
             "speed-up over fp32 flash |" if up else "")
          + f"  ({args.precision}, {device}, {torch.get_num_threads()} threads)")
    print("|---|---|---|---|---|---|---|" + ("---|---|---|---|" if up else ""))
    for shape in SHAPES:
        flash = fwd_bwd_ms(shape, SDPBackend.FLASH_ATTENTION, dtype, device, args.repeats)
        math = fwd_bwd_ms(shape, SDPBackend.MATH, dtype, device, args.repeats)
        row = f"| {' | '.join(map(str, shape))} | {flash:.1f} | {math:.1f} | {flash / math:.2f}x |"
        if up:
            cast = fwd_bwd_ms(shape, SDPBackend.FLASH_ATTENTION, dtype, device, args.repeats, torch.float32)
            explicit = fwd_bwd_ms(shape, None, dtype, device, args.repeats)
            row += f" {cast:.1f} | {min(flash, math) / cast:.2f}x | {explicit:.1f} | {cast / explicit:.2f}x |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
