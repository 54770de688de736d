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


def sdpa_input_dtypes(monkeypatch, fn) -> list[torch.dtype]:
    """The dtype of q in every SDPA call while ``fn()`` runs."""
    import torch.nn.functional as F

    seen, real = [], F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, *a, **kw: seen.append(q.dtype) or real(q, *a, **kw))
    fn()
    monkeypatch.setattr(F, "scaled_dot_product_attention", real)
    return seen


@pytest.fixture
def long_setup():
    """The debug MAE at 64 px: 65 tokens in the encoder (explicit attention on a CPU under bf16), 257 in the
    decoder (SDPA core in fp32)."""
    torch.manual_seed(0)
    model = openmae.create_model("mae_vit_debug_patch4_32", img_size=64, norm_pix_loss=True)
    return model, torch.randn(4, 3, 64, 64), torch.rand(4, 256)


@pytest.mark.parametrize("ckpt", [False, True])
def test_cpu_bf16_attention_paths_equal_timms_bf16_attention(long_setup, monkeypatch, ckpt):
    """On a CPU under bf16, short sequences take timm's explicit attention and long ones the SDPA core in fp32
    (each faster there); loss and gradients equal timm's all-bf16 fused attention within bf16's tolerance, also
    when activation checkpointing recomputes the blocks."""
    from openmae.models import attention

    model, imgs, noise = long_setup
    model.cfg.grad_checkpointing = ckpt
    dtypes = sdpa_input_dtypes(monkeypatch, lambda: loss_and_grads(model, imgs, noise, torch.bfloat16))
    # only the decoder's 257-token blocks call SDPA, in fp32; recomputed under checkpointing: twice
    assert dtypes == [torch.float32] * len(model.decoder_blocks) * (2 if ckpt else 1)
    ours = loss_and_grads(model, imgs, noise, torch.bfloat16)
    monkeypatch.setattr(attention, "cpu_bf16", lambda x: False)
    dtypes = sdpa_input_dtypes(monkeypatch, lambda: loss_and_grads(model, imgs, noise, torch.bfloat16))
    assert set(dtypes) == {torch.bfloat16}  # timm's own path, in every block
    assert len(dtypes) == (len(model.blocks) + len(model.decoder_blocks)) * (2 if ckpt else 1)
    timm_bf16 = loss_and_grads(model, imgs, noise, torch.bfloat16)
    assert abs(ours[0] - timm_bf16[0]) / timm_bf16[0] <= 1e-2
    for k, ref in timm_bf16[1].items():
        err = (ours[1][k].float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-12)
        assert err <= 1e-2, k


@pytest.mark.parametrize("tokens", [attention_max := 256, attention_max + 1])
def test_cpu_bf16_short_sequences_are_timms_explicit_attention(monkeypatch, tokens):
    """Up to EXPLICIT_MAX_TOKENS the output and gradients are exactly timm's fused_attn=False branch's; past it,
    the fp32 SDPA core runs instead."""
    from openmae.models.attention import EXPLICIT_MAX_TOKENS, Attention

    assert EXPLICIT_MAX_TOKENS == attention_max
    torch.manual_seed(0)
    attn, x = Attention(64, 4, qkv_bias=True), torch.randn(3, tokens, 64)

    def out_and_grads(fused: bool):
        attn.fused_attn = fused
        attn.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = attn(x)
        out.float().square().mean().backward()
        return out, [p.grad.clone() for p in attn.parameters()]

    dtypes = sdpa_input_dtypes(monkeypatch, lambda: out_and_grads(True))
    ours, timm_explicit = out_and_grads(True), out_and_grads(False)
    if tokens <= EXPLICIT_MAX_TOKENS:
        assert dtypes == []
        assert torch.equal(ours[0], timm_explicit[0]) and all(map(torch.equal, ours[1], timm_explicit[1]))
    else:
        assert dtypes == [torch.float32]
        assert (ours[0].float() - timm_explicit[0].float()).norm() / timm_explicit[0].float().norm() <= 1e-2


def test_classifier_attention_core_in_fp32_under_cpu_bf16(monkeypatch):
    from openmae.models import attention
    from openmae.models.vit import create_classifier

    torch.manual_seed(0)
    model = create_classifier(openmae.create_model("mae_vit_debug_patch4_32", img_size=64).cfg, 10)
    imgs = torch.randn(4, 3, 64, 64)  # 257 tokens: the fp32 core

    def logits():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(imgs).float()

    dtypes = sdpa_input_dtypes(monkeypatch, logits)
    assert dtypes == [torch.float32] * len(model.blocks)
    ours = logits()
    monkeypatch.setattr(attention, "cpu_bf16", lambda x: False)
    ref = logits()
    assert (ours - ref).norm() / ref.norm() <= 1e-2


def test_attention_path_by_device_and_dtype():
    from openmae.models.attention import cpu_bf16

    bf16, fp32 = torch.zeros(1, dtype=torch.bfloat16), torch.zeros(1)
    assert cpu_bf16(bf16) and not cpu_bf16(fp32)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # fp32 tensors under bf16 autocast compute in bf16
        assert cpu_bf16(fp32)
    assert not cpu_bf16(torch.zeros(1, dtype=torch.bfloat16, device="meta"))  # not a CPU: timm's path


def test_math_and_flash_kernels_agree_in_fp32(setup):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model, imgs, noise = setup
    with sdpa_kernel([SDPBackend.MATH]):
        math = loss_and_grads(model, imgs, noise)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        flash = loss_and_grads(model, imgs, noise)
    assert abs(math[0] - flash[0]) / flash[0] <= 1e-5
    assert_close_rel(math[1], flash[1], 1e-5)


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


def test_compiled_bf16_step_on_cpu_keeps_the_attention_paths(long_setup, monkeypatch):
    model, imgs, noise = long_setup
    ref = loss_and_grads(model, imgs, noise, torch.bfloat16)
    compiled = torch.compile(model)
    dtypes = sdpa_input_dtypes(monkeypatch, lambda: loss_and_grads(model, imgs, noise, torch.bfloat16, run=compiled))
    assert dtypes and set(dtypes) == {torch.float32}  # seen while tracing: the decoder's
    fast = loss_and_grads(model, imgs, noise, torch.bfloat16, run=compiled)
    assert abs(fast[0] - ref[0]) / ref[0] <= 1e-2
    for k, r in ref[1].items():
        assert (fast[1][k].float() - r.float()).norm() / r.float().norm().clamp_min(1e-12) <= 1e-2, k


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
    rate = out["matmul_tflops_by_precision"]["fp32"]
    assert set(out["matmul_tflops_by_precision"]) == {"fp32"} and out["matmul_tflops"] == rate > 0
    for r in out["rows"]:  # every MFU is a fraction of the rate the run reports
        assert r["mfu"] == pytest.approx(r["tflops"] / rate, rel=1e-9)


def test_benchmark_compiled_and_eager_openmae_in_one_run():
    from openmae.engine.benchmark import benchmark

    out = benchmark("mae_vit_debug_patch4_32", 4, "fp32", compile_model=True, compare_hf=False, eager_reference=False,
                    device_name="cpu", warmup=1, steps=1, eager_too=True)
    assert [r["name"] for r in out["rows"]] == ["openmae fp32 compiled (model)", "openmae fp32"]
    assert all(r["images_per_s"] > 0 for r in out["rows"])


@pytest.mark.parametrize("interleave", [True, False])
def test_benchmark_adds_the_checkpointed_step_as_one_more_row(interleave, monkeypatch):
    """``checkpointed_too``: the eager step with activation checkpointing beside the plain one, in one run (the GPU
    check's memory comparison); its model really checkpoints, the first row's does not."""
    from openmae.engine import benchmark as bench

    built = []
    real = bench.openmae_step

    def spy(cfg, *args, **kwargs):
        built.append(cfg.grad_checkpointing)
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(bench, "openmae_step", spy)
    out = bench.benchmark("mae_vit_debug_patch4_32", 4, "fp32", compare_hf=False, eager_reference=False,
                          device_name="cpu", warmup=1, steps=1, interleave=interleave, checkpointed_too=True)
    assert [r["name"] for r in out["rows"]] == ["openmae fp32", "openmae fp32 ckpt"] and built == [False, True]
    assert all(r["images_per_s"] > 0 for r in out["rows"])
    built.clear()  # already checkpointing: no second row of the same step
    out = bench.benchmark("mae_vit_debug_patch4_32", 4, "fp32", compare_hf=False, eager_reference=False,
                          device_name="cpu", warmup=1, steps=1, grad_checkpointing=True, checkpointed_too=True)
    assert [r["name"] for r in out["rows"]] == ["openmae fp32 ckpt"] and built == [True]


def test_benchmark_times_the_matmul_rates_in_the_steps_rounds(monkeypatch):
    """On a CPU the matmul rate of each precision the MFUs refer to (bf16 for openmae and Hugging Face, fp32 for
    the eager reference) is timed in the same rounds as the steps, not once before them at another moment."""
    from openmae.engine import benchmark as bench

    timed = []
    real = bench.time_interleaved

    def spy(steps, *args, **kwargs):
        timed.append(list(steps))
        return real(steps, *args, **kwargs)

    monkeypatch.setattr(bench, "time_interleaved", spy)
    monkeypatch.setitem(bench.MATMUL_PROBE, "cpu", (64, 1))
    out = bench.benchmark("mae_vit_debug_patch4_32", 4, "bf16", device_name="cpu", warmup=1, steps=2)
    assert timed == [["openmae bf16", "huggingface sdpa bf16", "eager fp32 reference", "matmul bf16", "matmul fp32"]]
    assert set(out["matmul_tflops_by_precision"]) == {"bf16", "fp32"}
    assert out["matmul_tflops"] == out["matmul_tflops_by_precision"]["bf16"]
    ref = out["rows"][-1]
    assert ref["mfu"] == pytest.approx(ref["tflops"] / out["matmul_tflops_by_precision"]["fp32"], rel=1e-9)


def test_plot_throughput_divides_by_each_runs_reference(tmp_path):
    """benchmarks/plot_throughput.py: each row's images/s over its own run's eager reference; the figure is written;
    a run without a reference row, a log without results and a missing file are refused by name."""
    import json
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "benchmarks"))
    from plot_throughput import main, read_results, speedups

    def result(preset, rows):
        return {"preset": preset, "rows": [{"name": n, "images_per_s": v} for n, v in rows]}

    log = tmp_path / "run.log"
    log.write_text(json.dumps(result("s", [("openmae bf16", 15.0), ("huggingface sdpa bf16", 10.0),
                                           ("eager fp32 reference", 6.0)])) + "\n| a table | line |\n"
                   + json.dumps(result("t", [("openmae bf16", 300.0), ("eager fp32 reference", 200.0)])) + "\n")
    results = read_results(log)
    assert [r["preset"] for r in results] == ["s", "t"]
    assert speedups(results[0]) == {"openmae bf16": 2.5, "huggingface sdpa bf16": 10.0 / 6.0}
    out = tmp_path / "bars.png"
    main([f"one={log}", f"two={log}", "-o", str(out)])
    assert out.stat().st_size > 1000
    with pytest.raises(ValueError, match="s: no eager reference row"):
        speedups(result("s", [("openmae bf16", 15.0)]))
    (tmp_path / "empty.log").write_text("| only | a table |\n")
    with pytest.raises(SystemExit, match="no benchmark results in it"):
        main([f"e={tmp_path / 'empty.log'}", "-o", str(out)])
    with pytest.raises(SystemExit, match="no log file at"):
        main([f"m={tmp_path / 'missing.log'}", "-o", str(out)])
    with pytest.raises(SystemExit, match="is not LABEL=PATH"):
        main([str(log), "-o", str(out)])
