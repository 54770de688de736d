import pytest
import torch

from openmae.models.config import MASKINGS, MAEConfig
from openmae.models.masking import STRATEGIES, BlockMasking, GridMasking, make_strategy, plan_from_noise


def test_random_masking_invariants():
    noise = torch.rand(4, 196)
    plan = plan_from_noise(noise, 0.75)
    keep = int(196 * 0.25)
    assert plan.ids_keep.shape == (4, keep)
    assert torch.equal(plan.mask.sum(1), torch.full((4,), 196.0 - keep))
    ids_shuffle = torch.argsort(noise, dim=1)
    # ids_restore inverts the shuffle
    assert torch.equal(torch.gather(ids_shuffle, 1, plan.ids_restore), torch.arange(196).expand(4, -1))
    # kept patches are exactly the zeros of the mask
    kept_mask = torch.gather(plan.mask, 1, plan.ids_keep)
    assert kept_mask.sum() == 0
    # the lowest-noise patches are kept
    assert torch.equal(plan.ids_keep.sort(1).values, noise.topk(keep, dim=1, largest=False).indices.sort(1).values)


def test_same_noise_same_mask_different_noise_different_mask():
    noise = torch.rand(2, 64)
    assert torch.equal(plan_from_noise(noise, 0.75).mask, plan_from_noise(noise.clone(), 0.75).mask)
    assert not torch.equal(plan_from_noise(noise, 0.75).mask, plan_from_noise(torch.rand(2, 64), 0.75).mask)


def test_generator_makes_masks_deterministic():
    strategy = make_strategy("random")
    a = strategy.noise(3, (8, 8), 0.75, generator=torch.Generator().manual_seed(5))
    b = strategy.noise(3, (8, 8), 0.75, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.9])
def test_keep_count_official_int(ratio):
    plan = plan_from_noise(torch.rand(2, 49), ratio)
    assert plan.ids_keep.shape[1] == int(49 * (1 - ratio))


def test_block_masking_is_contiguous_and_exact_count():
    gen = torch.Generator().manual_seed(0)
    noise = BlockMasking().noise(4, (14, 14), 0.5, generator=gen)
    plan = plan_from_noise(noise, 0.5)
    assert torch.equal(plan.mask.sum(1), torch.full((4,), 98.0))
    # removed patches cluster: most removed patches have a removed 4-neighbour (random masking gives ~50%)
    m = plan.mask.view(4, 14, 14)
    neighbour = torch.zeros_like(m)
    neighbour[:, 1:] += m[:, :-1]
    neighbour[:, :-1] += m[:, 1:]
    neighbour[:, :, 1:] += m[:, :, :-1]
    neighbour[:, :, :-1] += m[:, :, 1:]
    frac = ((neighbour >= 3) & (m == 1)).sum() / m.sum()
    assert frac > 0.6


def test_grid_masking_keeps_one_per_cell():
    noise = GridMasking().noise(3, (8, 8), 0.75, generator=torch.Generator().manual_seed(1))
    plan = plan_from_noise(noise, 0.75)
    kept = (1 - plan.mask).view(3, 4, 2, 4, 2).sum(dim=(2, 4))  # per 2x2 cell
    assert torch.equal(kept, torch.ones(3, 4, 4))


def test_bad_ratio_and_name():
    with pytest.raises(ValueError, match=r"mask_ratio must be in \[0, 1\), got 1.0"):
        plan_from_noise(torch.rand(1, 4), 1.0)
    with pytest.raises(ValueError, match="unknown masking strategy 'checker'"):
        make_strategy("checker")
    with pytest.raises(ValueError, match="unknown masking strategy 'checker'"):
        MAEConfig(masking="checker")


def test_config_names_are_the_strategies_implemented():
    """MAEConfig checks model.masking against a name list of its own (it loads without torch): exactly these."""
    assert set(MASKINGS) == set(STRATEGIES)
    assert all(MAEConfig(masking=name).masking == name for name in MASKINGS)
