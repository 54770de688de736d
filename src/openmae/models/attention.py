"""timm's attention, with the kernel chosen for a CPU under bf16 by sequence length.

On a CPU, both of PyTorch's bf16 SDPA kernels are slow for MAE's shapes: the bf16 flash kernel's backward, and the
math kernel, which computes bf16 in fp32 inside (unless a process-wide flag says otherwise). So on a CPU under bf16
:class:`Attention` runs

- up to ``EXPLICIT_MAX_TOKENS`` (256) tokens: timm's explicit attention (its ``fused_attn=False`` branch, the
  official MAE's attention under autocast): two bf16 matmuls around a bf16 softmax, the (B, H, N, N) probabilities
  kept for the backward. Forward plus backward against the fp32 flash kernel below, two runs: 1.12-2.09x faster
  from 17 to 197 tokens (heads of width 32 and 64; ViT-S/16's 197-token decoder 1.22x and 1.79x), 0.93-1.11x at 257
  tokens with width 32, 0.76-1.04x at 577 and 0.58x at 1025 (development machine: 2 cores with AMX and AVX-512 bf16,
  torch 2.14). ViT-S/16's whole MAE step ~10% faster than with the fp32 core past 96 tokens;
- longer sequences: the SDPA core in fp32 on the bf16 projections, cast up for the kernel and back (it beat both
  bf16 kernels at every MAE shape, 1.07-2.14x, casts included), whose memory does not grow with the square of the
  length. (Compiled ViT-S/16 step with this core at every length: 12.2 images/s, 10.0 with timm's bf16 kernel.)

Same parameters and state-dict keys as timm's, the same attention to within bf16 rounding, the same choice when
activation checkpointing recomputes a block or torch.compile traces it (the length is a static shape). GPUs and
fp32 runs keep timm's fused path. Timings: `benchmarks/attention_kernels.py`, docs/benchmarks.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Attention as TimmAttention

EXPLICIT_MAX_TOKENS = 256  # past it, about even at first, then slower, and its memory grows with N²


def cpu_bf16(x: torch.Tensor) -> bool:
    """Whether attention on ``x`` computes in bf16 on a CPU (autocast or bf16 tensors): this module's paths."""
    if x.device.type != "cpu":
        return False
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    return dtype == torch.bfloat16


class Attention(TimmAttention):
    """timm's ``Attention`` (pass as ``attn_layer``); on a CPU under bf16, explicit or fp32-core (module doc)."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if not (self.fused_attn and cpu_bf16(x)):
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        # timm's forward with the kernel chosen here: timm has no hook between its projections and the attention
        b, n, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, N, d)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if n <= EXPLICIT_MAX_TOKENS and attn_mask is None and not is_causal:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, N, N), as timm's fused_attn=False branch
            out = self.attn_drop(attn.softmax(dim=-1)) @ v
        else:
            if attn_mask is not None and attn_mask.is_floating_point():
                attn_mask = attn_mask.float()
            with torch.autocast("cpu", enabled=False):  # autocast would cast the fp32 inputs back down
                out = F.scaled_dot_product_attention(
                    q.float(), k.float(), v.float(), attn_mask=attn_mask, is_causal=is_causal,
                    dropout_p=self.attn_drop.p if self.training else 0.0,
                ).to(v.dtype)  # (B, H, N, d)
        out = self.norm(out.transpose(1, 2).reshape(b, n, self.attn_dim))  # (B, N, H * d)
        if gate is not None:
            out = out * gate
        return self.proj_drop(self.proj(out))
