"""Which SDPA kernel attention uses on a CPU.

PyTorch picks its flash-attention kernel for CPU whenever it can; in bf16 its backward pass is several times
slower than the plain (math) kernel's for short sequences, which the small images MAE is often trained on at 32
or 28 px hit in every block. Timed on the development machine (2 cores, AVX-512 bf16, torch 2.14) with
`benchmarks/attention_kernels.py`, forward plus backward in timm's attention layout, bf16, flash vs math: 17 tokens
25.8 vs 7.3 ms, 50 tokens 15.5 vs 7.8, 65 tokens 69 vs 35, 128 tokens 88 vs 65, 145 tokens 183 vs 153, 197 tokens
106 vs 128 (head width 32) and 106 vs 114 (64). In fp32 the flash kernel is the faster one at every length
(0.5-0.84x for math). So under bf16 on a CPU, up to ``CPU_MATH_MAX_TOKENS`` tokens, blocks run under the math
kernel; everything else keeps PyTorch's choice. Both kernels compute the same attention (tests/test_fastpaths.py).
"""

from __future__ import annotations

import contextlib

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

CPU_MATH_MAX_TOKENS = 128


def attention_kernels(device: torch.device, tokens: int, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Context for running blocks on sequences of ``tokens`` held in ``dtype`` on ``device``: the math kernel
    for short bf16 sequences on a CPU (bf16 autocast or bf16 tensors), PyTorch's own choice otherwise (and
    inside a compiled graph, which picks its own)."""
    if device.type != "cpu" or tokens > CPU_MATH_MAX_TOKENS or torch.compiler.is_compiling():
        return contextlib.nullcontext()
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
    if dtype == torch.bfloat16:
        return sdpa_kernel([SDPBackend.MATH])
    return contextlib.nullcontext()
