"""timm's attention with the SDPA core in fp32 on a CPU under bf16.

On a CPU, both of PyTorch's bf16 SDPA kernels are slower than its fp32 flash kernel for every attention shape MAE
trains with, casts included: forward plus backward, in timm's layout, bf16 tensors cast up for the kernel and the
output cast back, against the faster of the bf16 flash and math kernels, 1.07-2.14x (17 to 197 tokens, head width
32 and 64; development machine, 2 cores with AMX and AVX-512 bf16, torch 2.14; `benchmarks/attention_kernels.py`,
docs/benchmarks.md). The bf16 flash kernel's backward is the slow part; the math kernel materialises the attention
matrix. So :class:`Attention` runs the core in fp32 there: same parameters and state-dict keys as timm's, the same
attention to within bf16 rounding (the projections around it stay in bf16), one kernel for every length, and the
same choice when activation checkpointing recomputes a block or torch.compile traces it (compiled ViT-S/16 step:
12.2 images/s with it, 10.0 without). GPUs and fp32 runs keep timm's path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Attention as TimmAttention


def fp32_core(x: torch.Tensor) -> bool:
    """Whether attention on ``x`` runs its SDPA core in fp32: a CPU and bf16 (autocast or tensors)."""
    if x.device.type != "cpu":
        return False
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    return dtype == torch.bfloat16


class Attention(TimmAttention):
    """timm's ``Attention`` (pass as ``attn_layer``); on a CPU under bf16 the SDPA core runs in fp32 (module doc)."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if not (self.fused_attn and fp32_core(x)):
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        # timm's fused path with casts around the kernel: timm has no hook between its projections and SDPA
        b, n, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, N, d)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
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
