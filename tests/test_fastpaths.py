"""Every fast path computes the plain path's loss and gradients (fp32 <= 1e-5 relative, bf16 within 1e-2)."""

import pytest
import torch

import openmae


def loss_and_grads(model, imgs, noise, dtype=None, run=None):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        loss = (run if run is not None else model)(imgs, noise=noise).loss
    loss.backward()
    return loss.detach().float(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_close_rel(a: dict, b: dict, rel: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        scale = b[k].abs().max().clamp_min(1e-12)
        assert ((a[k].float() - b[k].float()).abs().max() / scale) <= rel, k


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = openmae.create_model("mae_vit_debug_patch4_32", norm_pix_loss=True)
    return model, torch.randn(4, 3, 32, 32), torch.rand(4, 64)


def plain(model):
    for blk in [*model.blocks, *model.decoder_blocks]:
        blk.attn.fused_attn = False
    return model


def test_sdpa_equals_explicit_attention(setup):
    model, imgs, noise = setup
    fast = loss_and_grads(model, imgs, noise)
    slow = loss_and_grads(plain(model), imgs, noise)
    assert abs(fast[0] - slow[0]) / slow[0] <= 1e-5
    assert_close_rel(fast[1], slow[1], 1e-5)


def test_activation_checkpointing_equals_plain(setup):
    model, imgs, noise = setup
    ref = loss_and_grads(model, imgs, noise)
    model.cfg.grad_checkpointing = True
    ckpt = loss_and_grads(model, imgs, noise)
    assert torch.equal(ref[0], ckpt[0])
    assert_close_rel(ckpt[1], ref[1], 1e-6)


def test_bf16_autocast_close_to_fp32(setup):
    model, imgs, noise = setup
    ref = loss_and_grads(model, imgs, noise)
    bf16 = loss_and_grads(model, imgs, noise, torch.bfloat16)
    assert abs(bf16[0] - ref[0]) / ref[0] <= 1e-2
    # gradients in bf16 carry ~3 significant digits: compare each as a whole tensor (relative norm of the error)
    for k in ref[1]:
        err = (bf16[1][k].float() - ref[1][k]).norm() / ref[1][k].norm().clamp_min(1e-12)
        assert err <= 1e-2, k


def test_compiled_step_equals_eager(setup):
    model, imgs, noise = setup
    ref = loss_and_grads(model, imgs, noise)
    compiled = torch.compile(model)
    fast = loss_and_grads(model, imgs, noise, run=compiled)
    assert abs(fast[0] - ref[0]) / ref[0] <= 1e-5
    assert_close_rel(fast[1], ref[1], 1e-4)


def test_block_compiled_step_equals_eager(setup):
    from openmae.engine.distributed import compile_module

    model, imgs, noise = setup
    ref = loss_and_grads(model, imgs, noise)
    run = compile_module(model, "blocks", [*model.blocks, *model.decoder_blocks])
    fast = loss_and_grads(model, imgs, noise, run=run)
    assert all(blk._compiled_call_impl is not None for blk in model.blocks)  # the blocks really are compiled
    assert abs(fast[0] - ref[0]) / ref[0] <= 1e-5
    assert_close_rel(fast[1], ref[1], 1e-4)
    assert set(model.state_dict()) == set(openmae.create_model("mae_vit_debug_patch4_32").state_dict())  # keys unchanged


def test_compile_mode_reaches_torch_compile(monkeypatch):
    """train.compile_mode (reduce-overhead: CUDA graphs) is handed to torch.compile, whole model or per block."""
    from openmae.engine.distributed import compile_module

    seen = []
    monkeypatch.setattr(torch, "compile", lambda module, **kw: seen.append(("model", kw)) or module)
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: seen.append(("block", kw)))
    model = openmae.create_model("mae_vit_debug_patch4_32")
    compile_module(model, "model", mode="reduce-overhead")
    compile_module(model, "blocks", [*model.blocks], mode="max-autotune")
    assert seen == [("model", {"mode": "reduce-overhead"})] + [("block", {"mode": "max-autotune"})] * len(model.blocks)


def test_interleaved_timing_goes_round_by_round():
    """The benchmark's implementations are timed in turn (a, b, a, b, ...) after each one's warm-up, so a
    shared machine's slow moments fall on all of them; each gets the median of its own timings."""
    from openmae.engine.benchmark import time_interleaved

    calls = []
    seconds = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                               torch.device("cpu"), warmup=2, repeats=3)
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert set(seconds) == {"a", "b"} and all(s >= 0 for s in seconds.values())


@pytest.mark.parametrize("interleave", [True, False])
def test_benchmark_rows_in_one_run(interleave):
    from openmae.engine.benchmark import benchmark

    out = benchmark("mae_vit_debug_patch4_32", 4, "fp32", device_name="cpu", warmup=1, steps=2, interleave=interleave)
    assert out["hf_error"] is None
    names = [r["name"] for r in out["rows"]]
    assert names == ["openmae fp32", "huggingface sdpa fp32", "eager fp32 reference"]
    assert all(r["images_per_s"] > 0 and r["mfu"] > 0 for r in out["rows"])
    assert out["timing"] == ("interleaved rounds" if interleave else "each alone, one after another")
