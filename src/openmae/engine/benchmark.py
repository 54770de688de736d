"""Throughput of a full pretraining step (forward, backward, AdamW), its FLOPs and MFU, side by side with
Hugging Face ``ViTMAEForPreTraining`` and a plain eager fp32 reference, all measured in one run."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn

from openmae.engine.config import PRECISIONS, precision_dtype
from openmae.engine.distributed import compile_module
from openmae.engine.host_memory import keep_freed_host_memory
from openmae.engine.optim import FUSED_ADAMW_DEVICES
from openmae.eval.flops import mae_train_flops
from openmae.models.mae import MAEConfig, MaskedAutoencoder
from openmae.models.registry import model_config


@dataclass
class StepTiming:
    name: str
    images_per_s: float
    step_ms: float
    tflops: float
    mfu: float
    peak_mem_mb_per_image: float | None

    def row(self) -> dict:
        return asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


MATMUL_PROBE = {"cuda": (8192, 1), "cpu": (1024, 8)}  # device type -> (side of the square product, products per call)


def matmul_probe(device: torch.device, dtype: torch.dtype) -> tuple[Callable[[], None], float]:
    """A call of dense square matmuls for ``dtype`` (eight 1024² products on a CPU, ~50-100 ms there; one 8192²
    on a GPU) and its FLOPs: timed like a training step, it gives the machine's matmul rate."""
    size, count = MATMUL_PROBE["cuda" if device.type == "cuda" else "cpu"]
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)

    def probe() -> None:
        for _ in range(count):
            a @ b

    return probe, 2 * size**3 * count


def matmul_rate(device: torch.device, dtype: torch.dtype, repeats: int = 10) -> float:
    """Measured dense matmul FLOP/s of this machine for ``dtype`` (median of ``repeats`` probe calls)."""
    probe, flops = matmul_probe(device, dtype)
    return flops / time_interleaved({"matmul": probe}, device, 3, repeats)["matmul"]


def time_interleaved(steps: dict[str, Callable[[], None]], device: torch.device, warmup: int,
                     repeats: int) -> dict[str, float]:
    """Median seconds of each named step after its ``warmup`` calls, timed in rounds (one step of each per round,
    in turn; the device synchronised around each timing), so that a shared machine's slow and fast moments fall
    on every implementation alike instead of on whichever ran then. One step alone is timed the same way."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            _sync(device)
            t = time.perf_counter()
            step()
            _sync(device)
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def train_step(model: nn.Module, forward: Callable[[], torch.Tensor], dtype: torch.dtype | None,
               device: torch.device, fused: bool) -> Callable[[], None]:
    """One pretraining step of ``model`` as a call: ``forward()`` (the loss) under autocast to ``dtype`` (None:
    fp32), backward (GradScaler for fp16), AdamW (``fused`` or foreach), gradients dropped."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95),
                            fused=fused)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

    def step() -> None:
        torch.compiler.cudagraph_mark_step_begin()  # CUDA graphs (compile mode reduce-overhead): a new step
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = forward()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    return step


@dataclass
class _Candidate:
    """One implementation's step, waiting to be timed (``interleave``) or timed at once."""

    name: str
    step: Callable[[], None]
    peak_dtype: torch.dtype  # its MFU is a fraction of this dtype's matmul rate


def _timing(name: str, seconds: float, cfg: MAEConfig, batch: int, peak: float, mem: float | None) -> StepTiming:
    flops = mae_train_flops(cfg) * batch
    return StepTiming(name, batch / seconds, 1000 * seconds, flops / seconds / 1e12, flops / seconds / peak, mem)


def _measure(c: _Candidate, cfg: MAEConfig, batch: int, device: torch.device, warmup: int, steps: int,
             peak: float) -> StepTiming:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = time_interleaved({c.name: c.step}, device, warmup, steps)[c.name]
    mem = torch.cuda.max_memory_allocated(device) / 2**20 / batch if device.type == "cuda" else None
    return _timing(c.name, seconds, cfg, batch, peak, mem)


def _dtype_name(dtype: torch.dtype) -> str:
    return next(name for name in PRECISIONS if (precision_dtype(name) or torch.float32) == dtype)


def resolve_device(device_name: str = "auto") -> torch.device:
    """``auto``: the GPU when there is one, else the CPU; any other name as given."""
    if device_name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device_name)


def random_batch(cfg: MAEConfig, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images (N, C, H, W) and masking noise (N, L) for ``cfg``: every implementation gets the same."""
    imgs = torch.randn(batch, cfg.in_chans, *cfg.img_size, device=device)
    return imgs, torch.rand(batch, cfg.grid[0] * cfg.grid[1], device=device)


def openmae_step(cfg: MAEConfig, imgs: torch.Tensor, noise: torch.Tensor, dtype: torch.dtype | None,
                 device: torch.device, compile_model: bool = False, compile_scope: str = "model",
                 compile_mode: str = "default") -> Callable[[], None]:
    """openmae's pretraining step at its best settings (fused AdamW where it exists), optionally compiled."""
    model = MaskedAutoencoder(cfg).to(device)
    run = compile_module(model, compile_scope, [*model.blocks, *model.decoder_blocks], compile_mode) \
        if compile_model else model
    return train_step(model, lambda: run(imgs, noise=noise).loss, dtype, device, device.type in FUSED_ADAMW_DEVICES)


def benchmark(preset: str, batch: int, precision: str = "bf16", compile_model: bool = False, compare_hf: bool = True,
              eager_reference: bool = True, device_name: str = "auto", warmup: int = 3, steps: int = 10,
              grad_checkpointing: bool = False, compile_scope: str = "model", compile_mode: str = "default",
              interleave: bool | None = None, eager_too: bool = False, checkpointed_too: bool = False,
              **overrides) -> dict:
    """Time openmae's step (and the peers') for ``preset``; returns rows and the machine's matmul rate.

    ``eager_too`` (with ``compile_model``): openmae's eager step as one more row, so that one run says which of
    the two is openmae's best setting on this machine (compiling wins on some CPUs and loses on others).
    ``checkpointed_too``: openmae's eager step with activation checkpointing as one more row (with ``grad_checkpointing``
    already on, nothing is added), so that one run gives the peak memory per image with and without it.

    ``interleave`` (default: on a CPU) times the implementations in turn, round by round (``time_interleaved``),
    with the matmul probes (``matmul_probe``) of the precisions the MFUs refer to in the same rounds: a shared
    machine's slow moments then fall on the rates and the steps alike. Otherwise each is timed alone, one after
    the other, which a GPU needs to read each one's peak memory, the matmul rates first."""
    device = resolve_device(device_name)
    dtype = precision_dtype(precision)
    cfg = model_config(preset, grad_checkpointing=grad_checkpointing, **overrides)
    host_memory = keep_freed_host_memory()  # as a training run does; for every row (one process)
    rates: dict[torch.dtype, float] = {}  # matmul FLOP/s by dtype: read alone, or in the rounds (interleave)
    imgs, noise = random_batch(cfg, batch, device)
    interleave = device.type == "cpu" if interleave is None else interleave
    rows, waiting = [], []

    # openmae's optimizer, and Hugging Face's at its best (its Trainer's default is fused AdamW since torch 2.8)
    best_fused = device.type in FUSED_ADAMW_DEVICES

    def add(name: str, step: Callable[[], None], step_dtype: torch.dtype | None) -> None:
        candidate = _Candidate(name, step, step_dtype or torch.float32)
        if interleave:
            waiting.append(candidate)
        else:
            if candidate.peak_dtype not in rates:
                rates[candidate.peak_dtype] = matmul_rate(device, candidate.peak_dtype)
            rows.append(_measure(candidate, cfg, batch, device, warmup, steps, rates[candidate.peak_dtype]))

    torch.manual_seed(0)
    mode = "" if compile_mode == "default" else f", {compile_mode}"
    compiled = f" compiled ({compile_scope}{mode})" if compile_model else ""
    label = f"openmae {precision}{compiled}{' ckpt' if grad_checkpointing else ''}"
    # timed alone, the model is freed with its step: the rows after this one measure their own peak memory
    add(label, openmae_step(cfg, imgs, noise, dtype, device, compile_model, compile_scope, compile_mode), dtype)
    if compile_model and eager_too:
        torch.manual_seed(0)
        add(f"openmae {precision}{' ckpt' if grad_checkpointing else ''}", openmae_step(cfg, imgs, noise, dtype, device),
            dtype)
    if checkpointed_too and not grad_checkpointing:
        torch.manual_seed(0)
        add(f"openmae {precision} ckpt", openmae_step(replace(cfg, grad_checkpointing=True), imgs, noise, dtype, device),
            dtype)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    hf_error = None
    if compare_hf:
        try:
            from transformers import ViTMAEConfig, ViTMAEForPreTraining

            from openmae.convert.hf import hf_config_dict

            hf = ViTMAEForPreTraining(ViTMAEConfig(**hf_config_dict(cfg), attn_implementation="sdpa")).to(device)
            add(f"huggingface sdpa {precision}",
                train_step(hf, lambda m=hf: m(pixel_values=imgs, noise=noise).loss, dtype, device, best_fused), dtype)
            del hf  # with its step (when timed alone), before the next row measures its peak memory
        except Exception as err:  # a missing or incompatible transformers must not cost the other rows
            hf_error = f"{type(err).__name__}: {err}"
    if eager_reference:
        # the official code's step: explicit softmax(QK^T)V attention (timm 0.3.2), no compile; fp16 autocast +
        # GradScaler on CUDA as the official recipe, fp32 on the CPU; AdamW as every GPU check measured it (fused
        # on CUDA) and PyTorch's default (foreach) on a CPU
        ref = MaskedAutoencoder(cfg).to(device)
        for blk in [*ref.blocks, *ref.decoder_blocks]:
            blk.attn.fused_attn = False
        ref_dtype = torch.float16 if device.type == "cuda" else None
        name = "official-style fp16 eager" if ref_dtype else "eager fp32 reference"
        add(name, train_step(ref, lambda: ref(imgs, noise=noise).loss, ref_dtype, device, device.type == "cuda"),
            ref_dtype)
    if waiting:
        probes = {d: matmul_probe(device, d) for d in dict.fromkeys(c.peak_dtype for c in waiting)}
        seconds = time_interleaved({**{c.name: c.step for c in waiting},
                                    **{f"matmul {_dtype_name(d)}": probe for d, (probe, _) in probes.items()}},
                                   device, warmup, steps)
        rates = {d: flops / seconds[f"matmul {_dtype_name(d)}"] for d, (_, flops) in probes.items()}
        rows = [_timing(c.name, seconds[c.name], cfg, batch, rates[c.peak_dtype], None) for c in waiting]
    peak = rates[dtype or torch.float32]
    return {
        "preset": preset, "batch": batch, "precision": precision, "device": torch.cuda.get_device_name(device)
        if device.type == "cuda" else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)",
        "matmul_tflops": peak / 1e12,
        "matmul_tflops_by_precision": {_dtype_name(d): r / 1e12 for d, r in rates.items()},
        "train_gflops_per_image": mae_train_flops(cfg) / 1e9,
        "load_avg": os.getloadavg(), "host_memory": host_memory, "rows": [r.row() for r in rows], "hf_error": hf_error,
        "timing": "interleaved rounds" if interleave else "each alone, one after another",
    }


def table(result: dict) -> str:
    """The result of :func:`benchmark` as a Markdown table, ratios against openmae's fastest row."""
    rows = result["rows"]
    best = max(r["images_per_s"] for r in rows if r["name"].startswith("openmae"))  # openmae's fastest row
    rates = ", ".join(f"{r:.2f} TFLOP/s {name}" for name, r in result["matmul_tflops_by_precision"].items())
    lines = [f"{result['preset']} batch {result['batch']} on {result['device']} (matmul {rates}, "
             f"{result['train_gflops_per_image']:.2f} GFLOP/image, load {result['load_avg'][0]:.2f})",
             "| implementation | images/s | step ms | TFLOP/s | MFU | peak MiB/image | openmae's fastest row's speed-up |",
             "|---|---|---|---|---|---|---|"]
    if result.get("hf_error"):
        lines.append(f"| huggingface | failed: {result['hf_error'][:200]} | | | | | |")
    for r in rows:
        mem = "-" if r["peak_mem_mb_per_image"] is None else f"{r['peak_mem_mb_per_image']:.1f}"
        lines.append(f"| {r['name']} | {r['images_per_s']:.1f} | {r['step_ms']:.1f} | {r['tflops']:.3f} | "
                     f"{100 * r['mfu']:.1f}% | {mem} | {best / r['images_per_s']:.2f}x |")
    return "\n".join(lines)
