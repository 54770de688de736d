"""Keep freed host memory inside the process instead of giving it back to the kernel: a faster CPU step.

glibc's malloc returns large blocks to the kernel when they are freed (blocks above its mmap threshold are
unmapped; free space at the heap's top past its trim threshold is released), so each training step on a CPU
faults its activations' pages in again, zero-filled by the kernel: ~180,000 minor page faults (~700 MiB) per
ViT-S/16 MAE step at batch 16 and ~50,000 per tiny-ViT step on the development machine, against ~160 and ~400
with the setting below (docs/benchmarks.md has the step times). PyTorch's CPU allocator calls malloc directly and
caches nothing. The usual cure, tcmalloc or jemalloc through LD_PRELOAD (``torch.backends.xeon.run_cpu`` sets it
up), needs a system library and a variable set before the process starts; glibc's ``mallopt`` does the same from
inside the process, which is why this module exists: blocks up to 32 MiB (glibc's ceiling) come from the heap,
and the heap is trimmed only past 2 GiB of free space. The price: the process holds on to its peak host memory
until it exits, which a training run needs again at its next step anyway.

Left alone where the user chose an allocator (LD_PRELOAD, GLIBC_TUNABLES / MALLOC_* variables) and with
``OPENMAE_MALLOC=system``; nothing happens outside glibc (macOS, musl, Windows).
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
from collections.abc import Mapping

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc refuses more on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes a C int
_PRELOADED = ("jemalloc", "tcmalloc", "mimalloc")
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"  # where mallopt exists
KEPT = "freed blocks up to 32 MiB stay in the process (OPENMAE_MALLOC=system: glibc's defaults)"
USER_SETTINGS = ("OPENMAE_MALLOC", "LD_PRELOAD", "GLIBC_TUNABLES")  # with MALLOC_*: what _users_choice reads


def _users_choice(env: Mapping[str, str]) -> str | None:
    """Why the user's own allocator settings stand, or None when there are none."""
    if env.get("OPENMAE_MALLOC", "") == "system":
        return "OPENMAE_MALLOC=system"
    if any(name in env.get("LD_PRELOAD", "") for name in _PRELOADED):
        return "an allocator in LD_PRELOAD"
    if "glibc.malloc" in env.get("GLIBC_TUNABLES", "") or any(k.startswith("MALLOC_") for k in env):
        return "malloc settings in the environment"
    return None


@functools.cache  # once per process
def keep_freed_host_memory() -> str:
    """Set glibc's malloc to keep freed memory (module doc), once per process; returns what holds, for the log."""
    choice = _users_choice(os.environ)
    if choice is not None:
        return f"malloc as configured ({choice})"
    if not GLIBC:
        return "the system's malloc"
    libc = ctypes.CDLL(None)
    if libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 or libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return "glibc's malloc defaults (mallopt refused)"
    return KEPT
