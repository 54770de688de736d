"""torch.distributed under torchrun: process group setup, DDP / FSDP2 wrapping, the main rank's own work waited
for, evaluations split between the ranks."""

from __future__ import annotations

import datetime
import itertools
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


ONE_PROCESS = DistInfo()  # a run outside torchrun (a default argument: never changed)


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name} but CUDA is not available on this machine; use train.device=cpu")
    return device


_GROUPS = itertools.count()  # the process groups this process has joined


_STORE: list[Any] = []  # the key-value store of the process group init_distributed joined (wait_for_main's)
_WAITS = itertools.count()  # wait_for_main's calls: every rank makes them in the same order
MAIN_WAIT_S = 3600.0  # how long the other ranks wait for the main rank's own work by default (train.main_wait_s)
_MAIN_WAIT: list[float] = []  # that wait of the process group init_distributed joined


def init_distributed(device_name: str = "auto", timeout_s: float = 0.0, main_wait_s: float = MAIN_WAIT_S) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): NCCL on CUDA, gloo on CPU; ``timeout_s``:
    how long a collective waits for a rank (0: torch's default); ``main_wait_s``: how long :func:`wait_for_main`
    waits."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # torchrun keeps one store across elastic restarts; the keys a dead attempt left there (its ranks'
        # addresses) make the next attempt connect to dead peers and hang. A per-attempt prefix avoids them, and a
        # per-group one the keys of the group an earlier run of this process left (a script that pretrains, then
        # fine-tunes: every rank runs the same runs in the same order, so the count agrees)
        store, rank, world = next(dist.rendezvous("env://"))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = dist.PrefixStore(f"openmae/attempt{attempt}/group{next(_GROUPS)}", store)
        timeout = datetime.timedelta(seconds=timeout_s) if timeout_s else None
        dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world, timeout=timeout)
        _STORE[:] = [store]
        _MAIN_WAIT[:] = [main_wait_s]
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def compile_module(model: nn.Module, scope: str = "model", blocks: list[nn.Module] | None = None,
                   mode: str = "default") -> nn.Module:
    """``torch.compile`` the whole forward (``model``: one graph, the most fusion) or each transformer block
    (``blocks``: the identical blocks share one compiled graph, so compiling a deep model takes seconds, not
    minutes), in torch.compile's ``mode`` (``reduce-overhead``: CUDA graphs on a GPU). Returns the module to call."""
    if scope == "blocks":
        for block in blocks or []:
            block.compile(mode=mode)
        return model
    return torch.compile(model, mode=mode)


def parallelize(model: nn.Module, info: DistInfo, strategy: str = "ddp", compile_model: bool = False,
                blocks: list[nn.Module] | None = None, compile_scope: str = "model",
                compile_mode: str = "default") -> nn.Module:
    """Compile, then wrap for data parallelism, in that fixed order. Returns the module to call.

    ``fsdp`` shards parameters with FSDP2 (``fully_shard``) block by block, then the root.
    """
    if compile_model:
        model = compile_module(model, compile_scope, blocks, compile_mode)
    if not info.enabled:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        for block in blocks or []:
            fully_shard(block)
        fully_shard(model)
        if hasattr(model, "forward_features"):  # the evaluations' features (kNN): the root's weights gathered for it
            register_fsdp_forward_method(model, "forward_features")
        return model
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[info.device.index] if info.device.type == "cuda" else None
    )


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= info.world_size
    return value


GATHER_BYTES = 1 << 30  # the most gather_rows holds on a device at once


def share_of(count: int, info: DistInfo) -> tuple[np.ndarray, np.ndarray]:
    """This rank's part of ``count`` items an evaluation splits between the ranks: (indices, keep). Rank r takes
    items r, r + W, r + 2W, ... (W ranks), wrapped past the end so that every rank has ceil(count / W) of them and
    runs as many batches (the collectives of a stop check between batches, and the gather after, line up on every
    rank); ``keep`` (bool) is false on the wrapped repeats. :func:`gather_rows` puts the ranks' rows back in order."""
    world = info.world_size
    per = -(-count // world)
    position = np.arange(per, dtype=np.int64) * world + info.rank  # (per,) the items' places among all
    return position % max(count, 1), position < count


def part_of(source: Any, info: DistInfo) -> tuple[Any, np.ndarray]:
    """This rank's part of ``source``'s images (:func:`share_of`; the whole source outside torchrun) and its
    ``keep``."""
    from openmae.data.build import SourceView  # here: the data pipeline is not imported with the process group

    index, keep = share_of(len(source), info)
    return (SourceView(source, index) if info.enabled else source), keep


@dataclass
class RankSplit:
    """Items split between the ranks of a torchrun job (:func:`part_of`) and their rows gathered back in order
    (:func:`gather_rows`, on every rank): what a pass over images that every rank needs whole shares (the reference
    images of :func:`openmae.eval.patch_distance.read_reference`)."""

    info: DistInfo

    @property
    def processes(self) -> int:
        return self.info.world_size

    @property
    def main(self) -> bool:
        return self.info.is_main

    def part(self, source: Any) -> Any:
        return part_of(source, self.info)[0]

    def gather(self, local: torch.Tensor, count: int) -> torch.Tensor:
        return gather_rows(local.to(self.info.device), count, self.info)


def gather_stacked(local: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """(W, *local.shape): every rank's ``local`` (the same shape on every rank), in rank order, on every rank, on
    ``local``'s device. A collective (NCCL's needs the tensors on the rank's GPU; gloo's on the CPU)."""
    if not info.enabled:
        return local[None]
    on = info.device if dist.get_backend() == "nccl" else torch.device("cpu")
    mine = local.to(on).contiguous()
    every = [torch.empty_like(mine) for _ in range(info.world_size)]
    dist.all_gather(every, mine)
    return torch.stack(every).to(local.device)


def gather_rows(local: torch.Tensor, count: int, info: DistInfo) -> torch.Tensor:
    """(count, ...): the rows every rank computed for its part (:func:`share_of`, one row an item), on every rank, in
    the items' order, without the wrapped repeats."""
    if not info.enabled or not len(local):
        return local[:count]
    # in pieces of GATHER_BYTES at most on the device (cached probe features of ImageNet: tens of GB in all)
    rows = max(1, GATHER_BYTES // (local[0].numel() * local.element_size() * info.world_size))
    every = torch.cat([gather_stacked(local[i : i + rows], info) for i in range(0, len(local), rows)], dim=1)
    # (W, per, ...): rank r's row j is item j * W + r
    return every.transpose(0, 1).reshape(-1, *local.shape[1:])[:count]


def same_buffers(module: nn.Module, info: DistInfo) -> None:
    """Every rank's buffers of ``module`` made the main rank's: each rank updates a BatchNorm's running statistics
    from its own batches (DDP copies rank 0's over them at each training forward, then the rank's batch moves them),
    so an evaluation split between the ranks would measure a slightly different model on each; now it measures the
    main rank's, which it saves."""
    if info.enabled:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def from_main(value: Any, info: DistInfo) -> Any:
    """The main rank's ``value`` on every rank (a decision all must take alike, from what rank 0 sees)."""
    if not info.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class MainRankTimeout(RuntimeError):
    """The other ranks waited for the main rank's own work longer than train.main_wait_s."""


def wait_for_main(info: DistInfo) -> None:
    """Every rank waits here for the main rank, back from work of its own (writing a checkpoint, the best weights,
    pictures). They wait on the job's key-value store, with no collective in flight: that work may take longer than
    a collective's timeout (NCCL's watchdog ends a process whose collective has waited 10 minutes by default: a
    checkpoint of a large model on a slow file system) without ending the job; past train.main_wait_s they stop with
    an error that says so (a main rank hung in a write would hold the job until the scheduler's limit). Where the
    process group was made outside openmae (no store known), a barrier."""
    if not info.enabled:
        return
    if not _STORE:
        dist.barrier()
        return
    key = f"openmae/main-done/{next(_WAITS)}"
    if info.is_main:
        _STORE[0].set(key, "1")
        return
    seconds = _MAIN_WAIT[0] if _MAIN_WAIT else MAIN_WAIT_S
    try:
        _STORE[0].wait([key], datetime.timedelta(seconds=seconds))
    except RuntimeError as err:  # torch's DistStoreError: "wait timeout after ...", or the store's end
        if "timeout" not in str(err).lower():
            raise
        raise MainRankTimeout(
            f"rank {info.rank}: the main rank did not finish its own work (writing a checkpoint, the best weights or "
            f"pictures) within train.main_wait_s={seconds:g} s: it hangs or is slowed (a stuck file system?); see "
            "rank 0's log (`py-spy dump --pid <its pid>` shows where it is), or raise train.main_wait_s. torchrun's "
            "--max-restarts resumes the job from its last checkpoint") from None


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
    _STORE.clear()
    _MAIN_WAIT.clear()
