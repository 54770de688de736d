"""Where a training step's time goes: ``torch.profiler`` over a few steps, each operator's (or GPU kernel's) own
time put in one of a few kinds (matmuls, attention, copies and casts, the optimizer, the rest: element-wise work
and norms), per step. On a GPU the kernels' time is read, and the share of the wall time in which the GPU ran no
kernel (the step waiting on the host: Python, launches, synchronisation) is reported beside it.

The throughput benchmark says how fast a step is; this says what to fuse or remove next.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

OTHER = "element-wise, norms, other"
KINDS = ("matmul", "attention", "copies and casts", "optimizer", OTHER)
# first match wins; CPU operators by their aten names, GPU kernels by the words their libraries put in them
_RULES = [
    ("matmul", re.compile(r"^aten::(mm|addmm|bmm|baddbmm|_addmm_activation|addbmm|mkldnn_convolution|convolution_backward"
                          r"|cudnn_convolution\w*|_convolution)$|gemm|xmma|cutlass|nvjet|wgmma|cublas", re.I)),
    ("attention", re.compile(r"scaled_dot_product|flash|fmha|efficient_attention|softmax", re.I)),
    ("optimizer", re.compile(r"adam|_foreach_|multi_tensor_apply", re.I)),
    ("copies and casts", re.compile(r"^aten::(copy_|_to_copy|clone|contiguous|cat|gather|scatter\w*|index\w*)$|copy|"
                                    r"catarraybatched|gather|scatter|index_elementwise", re.I)),
]


def kind_of(name: str) -> str:
    """The kind (one of ``KINDS``) of a CPU operator or GPU kernel name."""
    for kind, rule in _RULES:
        if rule.search(name):
            return kind
    return OTHER


@dataclass
class StepProfile:
    device: str
    step_ms: float  # wall time of a profiled step (the profiler's own overhead included)
    kind_ms: dict[str, float]  # own time of each kind, per step (CPU: operators' self time; GPU: kernel time)
    top: list[dict] = field(default_factory=list)  # the costliest operators/kernels: name, kind, ms and calls per step
    device_idle_share: float | None = None  # GPU: share of the wall time with no kernel running
    title: str = ""  # what was profiled (profile_preset: preset, batch, precision, compilation)

    def table(self) -> str:
        total = sum(self.kind_ms.values()) or 1.0
        busy = "GPU kernel" if self.device_idle_share is not None else "operator self"
        lines = [self.title] if self.title else []
        lines += [f"profiled step on {self.device}: {self.step_ms:.1f} ms wall, {total:.1f} ms {busy} time",
                 "| kind | ms per step | share |", "|---|---|---|"]
        lines += [f"| {k} | {ms:.1f} | {100 * ms / total:.1f}% |" for k, ms in self.kind_ms.items()]
        if self.device_idle_share is not None:
            lines.append(f"GPU idle (no kernel running) for {100 * self.device_idle_share:.1f}% of the wall time")
        lines += ["", "| operator or kernel | kind | ms per step | calls per step |", "|---|---|---|---|"]
        lines += [f"| {t['name'][:90]} | {t['kind']} | {t['ms']:.2f} | {t['calls']:g} |" for t in self.top]
        return "\n".join(lines)


def own_times(events: Iterable, steps: int, device_time: bool) -> list[tuple[str, float, float]]:
    """(name, own ms per step, calls per step) of profiler averages. With ``device_time``, the GPU's events
    (kernels, memcpy, memset) and their time only: a CPU operator's own device time is that of the kernels it
    launched, which appear as events of their own, so counting both would count the kernels twice."""
    if device_time:
        return [(e.key, e.self_device_time_total / 1e3 / steps, e.count / steps) for e in events
                if e.device_type != DeviceType.CPU and e.self_device_time_total > 0]
    return [(e.key, e.self_cpu_time_total / 1e3 / steps, e.count / steps) for e in events]


def profile_step(step: Callable[[], None], device: torch.device, warmup: int = 2, steps: int = 3,
                 top: int = 15) -> StepProfile:
    """Run ``step`` ``warmup`` times, then profile ``steps`` calls; times are per step."""
    for _ in range(warmup):
        step()
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize(device)
    with profile(activities=activities) as prof:
        t = time.perf_counter()
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize(device)
        wall = (time.perf_counter() - t) / steps
    own = own_times(prof.key_averages(), steps, cuda)
    kind_ms = dict.fromkeys(KINDS, 0.0)
    for name, ms, _ in own:
        kind_ms[kind_of(name)] += ms
    ranked = sorted(own, key=lambda o: -o[1])[:top]
    idle = max(0.0, 1.0 - sum(kind_ms.values()) / (1e3 * wall)) if cuda else None
    name = torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)"
    return StepProfile(name, 1e3 * wall, kind_ms,
                       [{"name": n, "kind": kind_of(n), "ms": ms, "calls": c} for n, ms, c in ranked], idle)


def profile_preset(preset: str, batch: int, precision: str = "bf16", compile_model: bool = False,
                   compile_scope: str = "model", grad_checkpointing: bool = False, device_name: str = "auto",
                   warmup: int = 2, steps: int = 3, top: int = 15, compile_mode: str = "default") -> StepProfile:
    """Profile openmae's pretraining step for ``preset``: the step ``openmae benchmark`` times (random images,
    75% masking, fused AdamW where it exists, host memory kept as in training)."""
    from dataclasses import replace

    from openmae.engine.benchmark import openmae_step, random_batch, resolve_device
    from openmae.engine.config import precision_dtype
    from openmae.engine.host_memory import keep_freed_host_memory
    from openmae.models.registry import model_config

    device = resolve_device(device_name)
    keep_freed_host_memory()
    cfg = model_config(preset, grad_checkpointing=grad_checkpointing)
    torch.manual_seed(0)
    imgs, noise = random_batch(cfg, batch, device)
    step = openmae_step(cfg, imgs, noise, precision_dtype(precision), device, compile_model, compile_scope, compile_mode)
    compiled = f" compiled ({compile_scope})" if compile_model else ""
    return replace(profile_step(step, device, warmup, steps, top), title=f"{preset} batch {batch} {precision}{compiled}")


def kept_for_backward(model: torch.nn.Module, forward: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, int]:
    """``forward()``'s output and the bytes of the activations autograd keeps for its backward (each storage once,
    ``model``'s weights aside), counted by ``torch.autograd.graph.saved_tensors_hooks``: what a step holds in memory
    until its backward, on any device (a CPU has no peak-memory counter to read)."""
    kept: dict[int, int] = {}

    def keep(t: torch.Tensor) -> torch.Tensor:
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        out = forward()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return out, sum(n for ptr, n in kept.items() if ptr not in weights)
