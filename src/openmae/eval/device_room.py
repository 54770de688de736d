"""Where a nearest-neighbour search runs (the kNN's, the patch distances'): on the GPU asked for when what it holds
fits that GPU's free memory, else on the CPU, saying why."""

from __future__ import annotations

import logging

import torch


def device_with_room(need: int, device: torch.device | str, what: str, holding: str, log: logging.Logger
                     ) -> torch.device:
    """``device``, or the CPU where it is a GPU whose free memory (the driver's, and what PyTorch holds cached but
    unused: a training run's activations between steps) is less than ``need`` bytes; ``what`` runs there, holding
    ``holding`` (both for the warning, in ``log``)."""
    device = torch.device(device)
    if device.type != "cuda":
        return device
    free = torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if need > free:
        log.warning("%s runs on the CPU: %s need %.1f GB and %s has %.1f GB free", what, holding, need / 1e9, device,
                    free / 1e9)
        return torch.device("cpu")
    return device
