import pytest
import torch

from openmae.models.patches import patchify, unpatchify


@pytest.mark.parametrize("c,h,w,p", [(3, 32, 32, 4), (1, 28, 28, 7), (5, 24, 40, 8), (3, 224, 224, 16)])
def test_roundtrip_exact(c, h, w, p):
    imgs = torch.randn(2, c, h, w)
    patches = patchify(imgs, p)
    assert patches.shape == (2, (h // p) * (w // p), p * p * c)
    assert torch.equal(unpatchify(patches, p, (h, w), c), imgs)


def test_layout_matches_official():
    # official: x.reshape(N, C, h, p, w, p) -> einsum nchpwq->nhwpqc; first patch = top-left p x p block, (p, p, C)
    imgs = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    patches = patchify(imgs, 4)
    expected_first = imgs[0, :, :4, :4].permute(1, 2, 0).reshape(-1)
    assert torch.equal(patches[0, 0], expected_first)
    expected_second = imgs[0, :, :4, 4:8].permute(1, 2, 0).reshape(-1)  # row-major over the grid
    assert torch.equal(patches[0, 1], expected_second)


def test_wrong_patch_size_names_sizes():
    with pytest.raises(ValueError, match=r"patch size 5 does not divide image size 32x30"):
        patchify(torch.zeros(1, 3, 32, 30), 5)
    with pytest.raises(ValueError, match="expected L=16"):
        unpatchify(torch.zeros(1, 15, 48), 4, (16, 16), 3)
