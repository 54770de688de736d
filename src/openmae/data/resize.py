"""One antialiased bicubic resize for a whole batch of crops of different sizes (``data.device_augment`` on a GPU).

``F.interpolate`` resizes a batch only when all its images have one size; a pretraining batch has a different crop
box per image, so the per-image path runs torchvision's resize for each crop (on a GPU, for uint8: a cast, the
resize, a clamp, a rounding and a cast back), then its flip, and the training process's CPU time goes into
launching them. Here the batch is resized as matrix products
instead: the antialiased bicubic resize (PIL's filter, ``a = -0.5``, the one ``F.interpolate(mode="bicubic",
antialias=True)`` uses) is separable, so each crop's output is ``Wy @ crop @ Wx^T`` with ``Wy`` (H, h) and ``Wx``
(W, w) that filter's weights. Crops are padded into groups of similar size and each group takes one batched
product; a horizontal flip is ``Wx`` with its rows reversed. What remains per image is one copy into its group's
buffer. The weights are written here because PyTorch computes them only inside its resize kernels; they follow
those kernels' formula (window, clipping at the borders, normalisation), and tests hold the result to
``F.interpolate``'s.
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

BICUBIC_A = -0.5  # PIL's bicubic, which PyTorch's antialiased resize uses too
GROUP_PIXELS = 2**24  # a group's padded pixels per channel: 8 crops of 1448², 64 of 512²; one larger crop goes alone


def aa_bicubic_taps(in_sizes: torch.Tensor, out_size: int, max_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The antialiased bicubic resize of lengths ``in_sizes`` (n,) to ``out_size``, as each output pixel's window:
    ``first`` (n, out_size) its first input pixel and ``taps`` (n, out_size, K) the weights from there on (0 past
    the window). ``max_size`` (at least every input length) sets K."""
    size = in_sizes.to(torch.float32).view(-1, 1, 1)  # (n, 1, 1)
    scale = size / out_size
    stretch = scale.clamp(min=1.0)  # downscaling widens the filter by the scale (antialiasing)
    out = torch.arange(out_size, dtype=torch.float32, device=in_sizes.device).view(1, -1, 1)
    center = scale * (out + 0.5)  # (n, out, 1)
    support = 2.0 * stretch
    first = (center - support + 0.5).trunc().clamp(min=0)  # the window of each output pixel, clipped to the input
    stop = torch.minimum((center + support + 0.5).trunc(), size)
    width = 2 * math.ceil(2.0 * max(max_size / out_size, 1.0)) + 2  # the widest window in pixels
    pixel = first + torch.arange(width, dtype=torch.float32, device=in_sizes.device)  # (n, out, K)
    x = ((pixel - center + 0.5) / stretch).abs()
    a = BICUBIC_A
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    taps = torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x))) * (pixel < stop)
    return first.squeeze(-1).long(), taps / taps.sum(-1, keepdim=True)


def dense_weights(first: torch.Tensor, taps: torch.Tensor, width: int) -> torch.Tensor:
    """(n, out, width): the windows of :func:`aa_bicubic_taps` as matrices over ``width`` input pixels."""
    index = (first.unsqueeze(-1) + torch.arange(taps.shape[-1], device=taps.device)).clamp(max=width - 1)
    return taps.new_zeros(*taps.shape[:-1], width).scatter_add_(-1, index, taps)  # taps past an input's end are 0


def _groups(sizes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """[start, stop) runs of the crops (sorted by area) whose padded group stays within ``GROUP_PIXELS``."""
    runs, start, high, wide = [], 0, 0, 0
    for k, (h, w) in enumerate(sizes):
        high2, wide2 = max(high, h), max(wide, w)
        if k > start and (k + 1 - start) * high2 * wide2 > GROUP_PIXELS:
            runs.append((start, k))
            start, high2, wide2 = k, h, w
        high, wide = high2, wide2
    runs.append((start, len(sizes)))
    return runs


def resize_crops(crops: list[torch.Tensor], size: tuple[int, int], flips: list[bool]) -> torch.Tensor:
    """(N, C, H, W) float32 in [0, 255]: each (C, h_i, w_i) uint8 crop resized to ``size`` (antialiased bicubic),
    mirrored where ``flips`` says, rounded and clamped as a resize to uint8 would; float32 crops (arrays of bands)
    resized as they are, as ``F.interpolate`` does. No host synchronisation: the sizes reach the device in one
    non-blocking copy."""
    n, channels, device = len(crops), crops[0].shape[0], crops[0].device
    pixels = crops[0].dtype == torch.uint8
    order = sorted(range(n), key=lambda i: crops[i].shape[-2] * crops[i].shape[-1])
    sizes = [tuple(crops[i].shape[-2:]) for i in order]
    meta = torch.tensor([order, [s[0] for s in sizes], [s[1] for s in sizes], [int(flips[i]) for i in order]])
    if device.type == "cuda":
        meta = meta.pin_memory()
    meta = meta.to(device, non_blocking=True)  # (4, N): crop index, height, width, flip, by area
    first_y, taps_y = aa_bicubic_taps(meta[1], size[0], max(h for h, _ in sizes))  # the whole batch at once
    first_x, taps_x = aa_bicubic_taps(meta[2], size[1], max(w for _, w in sizes))
    flip = meta[3].bool().view(-1, 1)
    first_x = torch.where(flip, first_x.flip(1), first_x)  # a mirrored output: its columns' windows reversed
    taps_x = torch.where(flip.unsqueeze(-1), taps_x.flip(1), taps_x)
    out = torch.empty(n, channels, *size, device=device)
    for start, stop in _groups(sizes):
        high, wide = max(h for h, _ in sizes[start:stop]), max(w for _, w in sizes[start:stop])
        # uint8: whatever the padding holds is finite, and its weights are 0; floats could hold NaN there
        pad = crops[0].new_empty(stop - start, channels, high, wide) if pixels else crops[0].new_zeros(
            stop - start, channels, high, wide)
        for k in range(start, stop):
            h, w = sizes[k]
            pad[k - start, :, :h, :w].copy_(crops[order[k]])
        wy = dense_weights(first_y[start:stop], taps_y[start:stop], high)  # (m, H, high)
        wx = dense_weights(first_x[start:stop], taps_x[start:stop], wide)  # (m, W, wide)
        with torch.autocast(device.type, enabled=False):  # pixels in fp32 even when called under autocast
            out[meta[0, start:stop]] = wy.unsqueeze(1) @ pad.float() @ wx.transpose(1, 2).unsqueeze(1)  # (m, C, H, W)
    return out.round_().clamp_(0, 255) if pixels else out


def resize_each(crops: list[torch.Tensor], size: tuple[int, int], flips: list[bool]) -> torch.Tensor:
    """What :func:`resize_crops` computes, crop by crop with torchvision's resize (on a CPU its uint8 kernel, which
    rounds its weights to fixed point: within a grey level in 99% of the pixels): (N, C, H, W) float32."""
    out = [TF.resize(c, list(size), interpolation=InterpolationMode.BICUBIC, antialias=True) for c in crops]
    return torch.stack([o.flip(-1) if f else o for o, f in zip(out, flips, strict=True)]).float()
