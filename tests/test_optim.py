"""Layer-wise lr decay assignment and LARS against hand-computed numbers."""

import copy

import pytest
import torch

import openmae
from openmae.engine.optim import LARS, param_groups
from openmae.models.vit import create_classifier


def test_layer_decay_matches_official_assignment_vit_b():
    model = create_classifier(openmae.model_config("mae_vit_base_patch16"), num_classes=1000)
    groups = param_groups(model, 0.05, layer_decay=0.65, num_layers=12)
    assigned = {name: (g["layer_id"], g["lr_scale"], g["weight_decay"]) for g in groups for name in g["names"]}
    assert set(assigned) == {n for n, p in model.named_parameters() if p.requires_grad}
    for name, (layer, scale, wd) in assigned.items():
        if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
            expected = 0
        elif name.startswith("blocks."):
            expected = int(name.split(".")[1]) + 1
        else:
            expected = 13  # fc_norm, head
        assert layer == expected, name
        assert scale == pytest.approx(0.65 ** (13 - expected)), name
        one_d = name.endswith(".bias") or "norm" in name or name in ("cls_token", "pos_embed")
        assert wd == (0.0 if one_d else 0.05), name
    assert assigned["head.weight"][1] == 1.0
    assert assigned["blocks.11.mlp.fc1.weight"][1] == pytest.approx(0.65)
    assert assigned["patch_embed.proj.weight"][1] == pytest.approx(0.65**13)


def test_lars_hand_computed_step():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([{"params": [w, b], "weight_decay": 0.5}], lr=0.1, momentum=0.9, trust_coefficient=0.001)
    w.grad = torch.tensor([[1.0, 0.0]])
    b.grad = torch.tensor([2.0])
    opt.step()
    # w: g + wd*w = [2.5, 2.0], norm sqrt(10.25); q = 0.001 * 5 / sqrt(10.25); mu = q * [2.5, 2.0]
    q = 0.001 * 5 / 10.25**0.5
    torch.testing.assert_close(w.detach(), torch.tensor([[3.0 - 0.1 * q * 2.5, 4.0 - 0.1 * q * 2.0]]))
    # 1-D parameters: no decay, no trust ratio: plain momentum SGD
    torch.testing.assert_close(b.detach(), torch.tensor([1.0 - 0.1 * 2.0]))
    w.grad = torch.tensor([[1.0, 0.0]])
    b.grad = torch.tensor([2.0])
    opt.step()
    torch.testing.assert_close(b.detach(), torch.tensor([0.8 - 0.1 * (0.9 * 2.0 + 2.0)]))


def test_cpu_adamw_is_fused_and_equals_the_default_implementation():
    """On a CPU build_optimizer takes PyTorch's fused AdamW (faster); it updates as the default (foreach) one does,
    within fp32 rounding, with per-group learning-rate scales and weight decay."""
    from openmae.engine.optim import build_optimizer

    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))
    b, start = copy.deepcopy(a), copy.deepcopy(a)

    def groups(model):
        return [{"params": list(model[0].parameters()), "weight_decay": 0.05, "lr_scale": 0.5, "names": ["0"]},
                {"params": list(model[2].parameters()), "weight_decay": 0.0, "lr_scale": 1.0, "names": ["2"]}]

    fused = build_optimizer("adamw", groups(a), 1e-2, (0.9, 0.95), torch.device("cpu"))
    assert fused.defaults["fused"]
    plain = torch.optim.AdamW([{k: v for k, v in g.items() if k != "names"} for g in groups(b)], lr=1e-2,
                              betas=(0.9, 0.95))
    for step in range(5):
        x = torch.randn(8, 16)
        for model, opt in ((a, fused), (b, plain)):
            for g in opt.param_groups:
                g["lr"] = 1e-2 * g["lr_scale"] * (step + 1) / 5
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-7)
    assert not torch.equal(a[0].weight, start[0].weight)  # it did train
