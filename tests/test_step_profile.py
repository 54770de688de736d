"""The step profile: operator and kernel names sorted into kinds, and a real step's time split per step."""

from __future__ import annotations

import pytest
import torch

from openmae.engine.benchmark import openmae_step, random_batch
from openmae.engine.step_profile import KINDS, OTHER, kind_of, own_times, profile_step
from openmae.models.registry import model_config


@pytest.mark.parametrize("name, kind", [
    ("aten::mm", "matmul"), ("aten::addmm", "matmul"), ("aten::bmm", "matmul"),
    ("aten::convolution_backward", "matmul"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1", "matmul"),
    ("nvjet_hsh_128x256_64x4_2x1_v_bz_coopA_NTN", "matmul"),
    ("void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_32x32_128x2_tn_align8>", "matmul"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"), ("aten::_softmax", "attention"),
    ("void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits>", "attention"),
    ("aten::_fused_adamw_", "optimizer"), ("Optimizer.step#AdamW.step", "optimizer"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>", "optimizer"),
    ("aten::copy_", "copies and casts"), ("aten::_to_copy", "copies and casts"), ("aten::cat", "copies and casts"),
    ("aten::gather", "copies and casts"),
    ("void at::native::elementwise_kernel<128, 4, direct_copy_kernel_cuda(at::TensorIteratorBase&)>", "copies and casts"),
    ("aten::gelu_backward", OTHER), ("aten::native_layer_norm", OTHER), ("triton_poi_fused_add_gelu_0", OTHER),
])
def test_kinds_of_cpu_operators_and_gpu_kernels(name, kind):
    assert kind_of(name) == kind


def test_profile_of_a_real_step_is_per_step():
    """Three profiled steps of a debug MAE: one fused AdamW call per step, matmuls present, the costliest first."""
    device = torch.device("cpu")
    cfg = model_config("mae_vit_debug_patch4_32")
    torch.manual_seed(0)
    imgs, noise = random_batch(cfg, 4, device)
    prof = profile_step(openmae_step(cfg, imgs, noise, None, device), device, warmup=1, steps=3, top=50)
    assert list(prof.kind_ms) == list(KINDS)
    assert prof.kind_ms["matmul"] > 0 and prof.kind_ms["optimizer"] > 0
    assert sum(prof.kind_ms.values()) <= prof.step_ms  # own times of one thread's operators fit in the wall time
    calls = {t["name"]: t["calls"] for t in prof.top}
    assert calls["aten::_fused_adamw_"] == 1  # per step, not per profiled run
    # per step: 2 encoder blocks + 1 decoder block, each with qkv, proj, fc1, fc2 (addmm), plus embed and pred
    assert calls["aten::addmm"] == 4 * (cfg.depth + cfg.decoder_depth) + 2
    assert [t["ms"] for t in prof.top] == sorted((t["ms"] for t in prof.top), reverse=True)
    assert prof.device_idle_share is None and "| matmul |" in prof.table()


def test_benchmark_command_profiles_the_step(capsys):
    """``openmae benchmark --profile`` prints the step's time by kind instead of the comparison."""
    from openmae.cli.main import main

    assert main(["benchmark", "--profile", "--preset", "mae_vit_debug_patch4_32", "--batch", "4", "--steps", "1",
                 "--precision", "fp32"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mae_vit_debug_patch4_32 batch 4 fp32\nprofiled step on cpu")
    assert all(f"| {kind} |" in out for kind in KINDS) and "| aten::addmm | matmul |" in out


def test_gpu_time_counts_each_kernel_once():
    """On a GPU, an operator's own device time is its kernels' time, and the kernels are events of their own:
    only the device's events are summed (here 3 ms of matmul over two steps: 1.5 ms a step, not 3)."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    def event(key, device, cpu_us, device_us, count):
        return SimpleNamespace(key=key, device_type=device, self_cpu_time_total=cpu_us,
                               self_device_time_total=device_us, count=count)

    events = [event("aten::mm", DeviceType.CPU, 40.0, 3000.0, 2),
              event("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n", DeviceType.CUDA, 0.0, 3000.0, 2),
              event("aten::empty", DeviceType.CPU, 10.0, 0.0, 6)]
    assert own_times(events, 2, device_time=True) == [("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n", 1.5, 1.0)]
    assert own_times(events, 2, device_time=False) == [("aten::mm", 0.02, 1.0), ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n", 0.0, 1.0),
                                                       ("aten::empty", 0.005, 3.0)]


def test_benchmark_command_defaults_fit_a_cpu(monkeypatch, capsys):
    """Without --preset/--batch, a CPU-only machine benchmarks ViT-S/16 at batch 16 (not ViT-B/16), and the command
    prints the JSON line and the table of ratios."""
    from openmae.cli.main import main
    from openmae.engine import benchmark as bench

    seen = {}

    def fake(preset, batch, *args, **kwargs):
        seen.update(preset=preset, batch=batch)
        return {"preset": preset, "batch": batch, "device": "cpu", "matmul_tflops_by_precision": {"bf16": 1.0},
                "train_gflops_per_image": 39.0, "load_avg": (0.5, 0.5, 0.5), "hf_error": None,
                "rows": [{"name": "openmae bf16", "images_per_s": 20.0, "step_ms": 800.0, "tflops": 0.78, "mfu": 0.78,
                          "peak_mem_mb_per_image": None},
                         {"name": "huggingface sdpa bf16", "images_per_s": 10.0, "step_ms": 1600.0, "tflops": 0.39,
                          "mfu": 0.39, "peak_mem_mb_per_image": None}]}

    monkeypatch.setattr(bench, "benchmark", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["benchmark"]) == 0
    assert seen == {"preset": "mae_vit_small_patch16", "batch": 16}
    out = capsys.readouterr().out
    assert "| huggingface sdpa bf16 | 10.0 | 1600.0 | 0.390 | 39.0% | - | 2.00x |" in out
