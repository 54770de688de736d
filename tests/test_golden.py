"""Recorded ("golden") losses of the debug preset's first pretraining steps: the same seed gives the same run.

A change to the initialisation (or the order in which it draws random numbers), the masking, the loss, AdamW's
settings or the schedule changes these numbers, and fails here; the tests of each part say which. When a change is
meant to alter them, record the new values with the change and say why in its message.

The inputs are drawn from torch's CPU generator (the same on every machine and version), not decoded from files. The
tolerance, 1e-4 relative, is for the summation order of matmuls, which differs between CPUs (AVX2, AVX-512) and
thread counts. Measured against it: other images and masks move the losses by 1e-3 to 6e-3, a warm-up of 1.5
instead of 1 epoch by 3e-2, AdamW's beta2 0.999 instead of 0.95 by 2e-3; twice the weight decay only by 8e-5 in eight
steps (below it: `test_engine.py::test_no_decay_set_is_biases_norms_tokens_pos` covers the groups).
"""

import pytest
import torch

import openmae
from openmae.engine.optim import build_optimizer, param_groups
from openmae.engine.schedule import lr_at

# recorded 2026-12-04 with torch 2.14.1 on an AMD EPYC (2 cores; the same with one thread)
INIT_ABS_SUM = 13211.95703125
GOLDEN = {
    True: [1.5655356645584106, 1.56796133518219, 1.5182276964187622, 1.4460588693618774, 1.384779930114746,
           1.3443411588668823, 1.3026999235153198, 1.2820998430252075],
    False: [0.7528312802314758, 0.7506548762321472, 0.7012853622436523, 0.6100092530250549, 0.5200335383415222,
            0.4541545808315277, 0.4141939580440521, 0.3952726125717163],
}


def _first_steps(norm_pix_loss: bool) -> tuple[float, list[float]]:
    """Eight AdamW steps (openmae's groups: no decay on biases, norms, tokens) of the debug preset on 16 random images,
    the lr warmed up over four steps then decayed along the half cosine, a new mask each step."""
    torch.manual_seed(0)
    model = openmae.create_model("mae_vit_debug_patch4_32", norm_pix_loss=norm_pix_loss)
    gen = torch.Generator().manual_seed(1)
    imgs = torch.rand(16, 3, 32, 32, generator=gen)  # (N, C, H, W)
    opt = build_optimizer("adamw", param_groups(model, 0.05), 1e-3, (0.9, 0.95), torch.device("cpu"))
    init = float(sum(p.detach().abs().sum() for p in model.parameters()))
    losses = []
    for step in range(8):
        for group in opt.param_groups:
            group["lr"] = lr_at(step / 4, 1e-3, 0.0, 1, 2) * group.get("lr_scale", 1.0)
        loss = model(imgs, noise=torch.rand(16, 64, generator=gen)).loss  # noise (N, L): 64 patches of 4x4
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return init, losses


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_the_debug_presets_first_steps_give_the_recorded_losses(norm_pix_loss):
    init, losses = _first_steps(norm_pix_loss)
    assert init == pytest.approx(INIT_ABS_SUM, rel=1e-6)
    assert losses == pytest.approx(GOLDEN[norm_pix_loss], rel=1e-4)
