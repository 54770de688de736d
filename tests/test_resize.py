"""One resize for a batch of crops of different sizes (``openmae.data.resize``): the same pixels as resizing
each crop with ``F.interpolate(mode="bicubic", antialias=True)``, rounded to grey levels, flips included."""

import pytest
import torch
import torch.nn.functional as F

from openmae.data import resize
from openmae.data.resize import aa_bicubic_taps, dense_weights, resize_crops

SIZES = [(300, 500), (100, 150), (224, 224), (37, 1200), (600, 80), (50, 60), (7, 9)]  # down, up, equal, extreme


def reference(crop: torch.Tensor, size: tuple[int, int], flip: bool) -> torch.Tensor:
    out = F.interpolate(crop[None].float(), size=size, mode="bicubic", antialias=True, align_corners=False)[0]
    out = out.round().clamp(0, 255)
    return out.flip(-1) if flip else out


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("group_pixels", [2**24, 60_000], ids=["one group", "several groups"])
def test_resize_crops_equals_interpolate_per_crop(monkeypatch, channels, group_pixels):
    monkeypatch.setattr(resize, "GROUP_PIXELS", group_pixels)
    gen = torch.Generator().manual_seed(0)
    crops = [torch.randint(0, 256, (channels, h, w), dtype=torch.uint8, generator=gen) for h, w in SIZES]
    flips = [i % 3 == 0 for i in range(len(crops))]
    out = resize_crops(crops, (64, 48), flips)
    assert out.shape == (len(crops), channels, 64, 48) and out.dtype == torch.float32
    ref = torch.stack([reference(c, (64, 48), f) for c, f in zip(crops, flips)])
    diff = (out - ref).abs()
    assert diff.max() <= 1  # a rounding tie may fall the other way
    assert (diff > 0).float().mean() < 1e-3
    # a wrong flip, order or size would move whole images, not single grey levels
    assert not torch.equal(out[0], out[0].flip(-1))


def test_crops_of_a_view_and_the_groups_keep_the_batch_order(monkeypatch):
    """Crops are views into larger images (as the device path passes them) and come back in their own order,
    whatever order the size groups take."""
    monkeypatch.setattr(resize, "GROUP_PIXELS", 30_000)
    image = torch.randint(0, 256, (3, 400, 300), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    boxes = [(0, 0, 400, 300), (10, 20, 50, 40), (100, 50, 200, 250), (5, 5, 120, 90)]  # big first: sorted later
    crops = [image[:, top : top + h, left : left + w] for top, left, h, w in boxes]
    out = resize_crops(crops, (32, 32), [False] * 4)
    for i, crop in enumerate(crops):
        assert (out[i] - reference(crop, (32, 32), False)).abs().max() <= 1


def test_weights_are_a_normalised_window_inside_each_crop():
    w = dense_weights(*aa_bicubic_taps(torch.tensor([500, 100, 224]), 224, 600), 600)  # (3, 224, 600)
    assert torch.allclose(w.sum(-1), torch.ones(3, 224))
    assert w[0, :, 500:].abs().max() == 0 and w[1, :, 100:].abs().max() == 0  # nothing from the padding
    assert torch.allclose(w[2, :, :224], torch.eye(224), atol=1e-6)  # same size: the identity
    taps = (w[0] != 0).sum(-1)  # downscaling 500 -> 224 widens bicubic's 4 taps by the scale (antialiasing)
    assert taps.max() <= 10 and taps.float().mean() > 8


def test_autocast_around_the_call_does_not_lower_the_pixels_precision():
    crops = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
             for h, w in SIZES[:3]]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = resize_crops(crops, (40, 40), [False] * 3)
    assert out.dtype == torch.float32
    for crop, got in zip(crops, out):
        assert (got - reference(crop, (40, 40), False)).abs().max() <= 1  # bf16 products would be levels off
