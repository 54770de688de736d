"""The autocast dtype a run trains in: ``train.precision`` on the run's device."""

from __future__ import annotations

import functools
import logging

import torch

from openmae.engine.config import precision_dtype

log = logging.getLogger("openmae.train")


def cpu_has_native_bf16() -> bool:
    """Whether this x86 CPU has bf16 instructions (AVX512-BF16 or AMX), where bf16 autocast trains faster."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe() for probe in probes if probe is not None)


@functools.cache
def _bf16_hint() -> None:  # once per process
    log.info("train.precision=auto means fp32 on a CPU; this CPU has bf16 instructions, so train.precision=bf16 "
             "would train faster (1.5x for the Fashion-MNIST model on a 2-core AVX512-BF16 machine, same loss; "
             "docs/benchmarks.md)")


def cuda_has_native_bf16() -> bool:
    """Whether the current CUDA card computes in bf16 itself (Ampere or newer, ROCm), not by emulation: torch's
    ``is_bf16_supported()`` also says yes for a V100 or T4, whose bf16 runs without tensor cores."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch before 2.3 had no emulation to tell apart
        return torch.cuda.is_bf16_supported()


@functools.cache
def _fp16_note() -> None:  # once per process
    log.info("train.precision=auto means fp16 with a gradient scaler on this card, which has no native bf16 (as the "
             "official MAE code trains); set train.precision=fp32 for full precision")


def autocast_dtype(precision: str, device: torch.device, hint: bool = True) -> torch.dtype | None:
    """None for fp32; bf16 / fp16 for autocast. ``auto`` = bf16 on CUDA cards that compute in it (Ampere and newer),
    fp16 (with the loop's gradient scaler) on older ones, whose tensor cores are fp16 ones and which would emulate
    bf16; fp32 on CPU (where a CPU with bf16 instructions would train faster in bf16, the log says so)."""
    if precision == "auto":
        if hint and device.type == "cpu" and cpu_has_native_bf16():  # hint: training's (evaluate's is no training)
            _bf16_hint()
        if device.type != "cuda":
            return None
        if cuda_has_native_bf16():
            return torch.bfloat16
        _fp16_note()
        return torch.float16
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"train.precision=fp16 needs a CUDA device (got {device}); use bf16 or fp32 on CPU")
    return precision_dtype(precision)
