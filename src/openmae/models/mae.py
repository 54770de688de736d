"""MaskedAutoencoder: ViT encoder on the visible patches only, light decoder with mask tokens, pixel loss.

State-dict keys and shapes are exactly those of the official ``MaskedAutoencoderViT`` (timm block names),
so official checkpoints load as they are. Blocks and patch embedding are timm's (SDPA attention).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

from openmae.models.attention import Attention
from openmae.models.config import MAEConfig
from openmae.models.masking import MaskPlan, make_strategy, plan_from_noise
from openmae.models.patches import patchify
from openmae.models.pos_embed import sincos_2d


@dataclass
class MAEOutput:
    """loss (scalar), pred (N, L, p*p*C), mask (N, L) with 1 = removed, ids_restore (N, L)."""

    loss: torch.Tensor
    pred: torch.Tensor
    mask: torch.Tensor
    ids_restore: torch.Tensor = field(repr=False)


class MaskedAutoencoder(nn.Module):
    """The paper's MAE with official state-dict keys; ``model(imgs, mask_ratio, noise)`` -> :class:`MAEOutput`."""

    def __init__(self, cfg: MAEConfig | None = None, **overrides) -> None:
        super().__init__()
        cfg = cfg or MAEConfig(**overrides)
        self.cfg = cfg
        norm = partial(nn.LayerNorm, eps=1e-6)
        num_patches = cfg.grid[0] * cfg.grid[1]
        self.masking = make_strategy(cfg.masking)

        # encoder
        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, cfg.embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, qkv_bias=True, norm_layer=norm, attn_layer=Attention)
            for _ in range(cfg.depth)
        )
        self.norm = norm(cfg.embed_dim)

        # decoder
        self.decoder_embed = nn.Linear(cfg.embed_dim, cfg.decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, cfg.decoder_embed_dim), requires_grad=False
        )
        self.decoder_blocks = nn.ModuleList(
            Block(cfg.decoder_embed_dim, cfg.decoder_num_heads, cfg.mlp_ratio, qkv_bias=True, norm_layer=norm,
                  attn_layer=Attention)
            for _ in range(cfg.decoder_depth)
        )
        self.decoder_norm = norm(cfg.decoder_embed_dim)
        self.decoder_pred = nn.Linear(cfg.decoder_embed_dim, cfg.patch_size**2 * cfg.in_chans, bias=True)
        self.initialize_weights()

    # ------------------------------------------------------------------ init
    def initialize_weights(self) -> None:
        """Official initialisation: fixed sin-cos tables, xavier-uniform linears (patch projection as a
        linear), zero biases, unit LayerNorms, cls and mask tokens normal(std=0.02)."""
        self.reset_pos_embed()
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(self._init_module)

    def reset_pos_embed(self) -> None:
        """The fixed sin-cos position tables of this model's grid (encoder and decoder)."""
        self.pos_embed.data.copy_(sincos_2d(self.cfg.embed_dim, self.cfg.grid))
        self.decoder_pos_embed.data.copy_(sincos_2d(self.cfg.decoder_embed_dim, self.cfg.grid))

    @staticmethod
    def _init_module(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ helpers
    @property
    def num_patches(self) -> int:
        return self.cfg.grid[0] * self.cfg.grid[1]

    def check_input(self, imgs: torch.Tensor) -> None:
        """Clear error for a batch that does not fit the model (shape, channels, size)."""
        if imgs.ndim != 4:
            raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(imgs.shape)}")
        _, c, h, w = imgs.shape
        if c != self.cfg.in_chans:
            raise ValueError(
                f"images have {c} channel{'s' * (c != 1)} but the model expects in_chans={self.cfg.in_chans}; "
                f"convert the data (data.channels) or build the model with in_chans={c}"
            )
        if (h, w) != tuple(self.cfg.img_size):
            raise ValueError(
                f"images are {h}x{w} but the model was built for {self.cfg.img_size[0]}x{self.cfg.img_size[1]}; "
                f"resize the inputs or build the model with img_size=({h}, {w})"
            )

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, L, p*p*C)."""
        return patchify(imgs, self.cfg.patch_size)

    def random_noise(self, batch: int, device: torch.device, generator: torch.Generator | None = None,
                     mask_ratio: float = 0.75) -> torch.Tensor:
        """Masking noise (N, L) drawn by the model's strategy; pass it back as ``noise=`` for a fixed mask."""
        return self.masking.noise(batch, self.cfg.grid, mask_ratio, generator=generator, device=device)

    def seeded_noise(self, seeds: torch.Tensor, mask_ratio: float = 0.75) -> torch.Tensor:
        """(N, L) masking noise on the CPU, row i drawn from ``seeds[i]`` alone: a sample's mask does not depend on
        the batch it is in, on the ranks or on a resume."""
        rows = [self.random_noise(1, torch.device("cpu"), torch.Generator().manual_seed(int(s) + 1), mask_ratio)
                for s in seeds.tolist()]
        return torch.cat(rows)

    def _run_blocks(self, blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        for blk in blocks:
            # recomputed in the backward when the block is in the graph: its input or its own weights need gradients
            # (the first trained block after frozen ones: its input needs none; pretrain.tune_blocks)
            if self.cfg.grad_checkpointing and self.training and torch.is_grad_enabled() and (
                    x.requires_grad or any(p.requires_grad for p in blk.parameters())):
                x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x

    # ------------------------------------------------------------------ forward
    def forward_encoder(
        self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, MaskPlan]:
        """Encode the visible patches: returns latent (N, 1 + K, D) and the mask plan."""
        self.check_input(imgs)
        x = self.patch_embed(imgs)  # (N, L, D)
        x = x + self.pos_embed[:, 1:, :]
        n, length, dim = x.shape
        if noise is None:
            noise = self.random_noise(n, x.device, generator, mask_ratio)
        elif noise.shape != (n, length):
            raise ValueError(f"noise must have shape (N, L) = {(n, length)}, got {tuple(noise.shape)}")
        plan = plan_from_noise(noise.to(x.device), mask_ratio)
        x = torch.gather(x, 1, plan.ids_keep.unsqueeze(-1).expand(-1, -1, dim))  # (N, K, D)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(n, -1, -1)  # (N, 1, D)
        x = torch.cat([cls, x], dim=1)  # (N, 1 + K, D)
        x = self._run_blocks(self.blocks, x)
        return self.norm(x), plan

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """(N, 1 + K, D) latent + unshuffle index -> pixel predictions (N, L, p*p*C)."""
        x = self.decoder_embed(latent)  # (N, 1 + K, Dd)
        n, visible, dim = x.shape
        length = ids_restore.shape[1]
        mask_tokens = self.mask_token.expand(n, length + 1 - visible, -1)  # (N, L - K, Dd)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)  # (N, L, Dd) in shuffled order
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))  # original patch order
        x = torch.cat([x[:, :1, :], x_], dim=1) + self.decoder_pos_embed  # (N, 1 + L, Dd)
        x = self._run_blocks(self.decoder_blocks, x)
        x = self.decoder_pred(self.decoder_norm(x))  # (N, 1 + L, p*p*C)
        return x[:, 1:, :]

    def target(self, imgs: torch.Tensor) -> torch.Tensor:
        """Per-patch regression target (N, L, p*p*C), standardised per patch when ``norm_pix_loss``."""
        target = self.patchify(imgs)
        if self.cfg.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)  # unbiased, as the official code
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        return target

    def patch_losses(self, imgs: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """(N, L): each patch's mean squared error against :meth:`target`."""
        return ((pred.float() - self.target(imgs).float()) ** 2).mean(dim=-1)

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over the removed patches only."""
        loss = self.patch_losses(imgs, pred)  # (N, L)
        return (loss * mask).sum() / mask.sum()

    def forward(
        self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> MAEOutput:
        latent, plan = self.forward_encoder(imgs, mask_ratio, noise, generator)
        pred = self.forward_decoder(latent, plan.ids_restore)
        loss = self.forward_loss(imgs, pred, plan.mask)
        return MAEOutput(loss=loss, pred=pred, mask=plan.mask, ids_restore=plan.ids_restore)

    def forward_features(self, imgs: torch.Tensor, last_blocks: int = 1) -> torch.Tensor:
        """Full-image encoder features without masking: (N, 1 + L, D), final norm applied (as timm).

        ``last_blocks`` > 1: the outputs of the last that many blocks, each through the final norm (as timm's
        ``forward_intermediates(norm=True)``), concatenated along the channels: (N, 1 + L, D * last_blocks).
        """
        self.check_input(imgs)
        if not 1 <= last_blocks <= self.cfg.depth:
            raise ValueError(f"last_blocks={last_blocks}: the encoder has {self.cfg.depth} blocks; choose 1..{self.cfg.depth}")
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]  # (N, L, D)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)  # (N, 1 + L, D)
        outputs = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i >= self.cfg.depth - last_blocks:
                outputs.append(self.norm(x))
        return torch.cat(outputs, dim=-1)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """Encoder tensors only (the layout of the official ``mae_pretrain_vit_*`` files)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(DECODER_PREFIXES)}


DECODER_PREFIXES = ("decoder_", "mask_token")
