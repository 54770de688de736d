"""Freed host memory stays in the process (no page faults for the next step's activations) unless the user chose."""

import logging
import os
import subprocess
import sys

import pytest

from openmae.engine.host_memory import GLIBC, KEPT, USER_SETTINGS, _users_choice

glibc_only = pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's (Linux); elsewhere nothing is set")

ROUNDS = """
import ctypes, resource, sys, torch
from openmae.engine.host_memory import KEPT, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, keep_freed_host_memory
# glibc's starting thresholds (128 KiB), held fixed: its own adjustments depend on what the process freed before
# and on where other threads' small blocks land, which made the baseline vary between runs
libc = ctypes.CDLL(None)
assert libc.mallopt(M_MMAP_THRESHOLD, 2**17) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2**17) == 1
if sys.argv[1] == "keep":
    print(keep_freed_host_memory())
def step():
    xs = [torch.ones(2**21) for _ in range(16)]  # 16 x 8 MiB alive at once, as a step's activations, then freed
    del xs
step(); step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _without_users_settings() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in USER_SETTINGS}


def _minor_faults(mode: str, **env: str) -> tuple[list[str], int]:
    clean = _without_users_settings()
    out = subprocess.run([sys.executable, "-c", ROUNDS, mode], env={**clean, **env}, capture_output=True, text=True,
                         check=True).stdout.split("\n")
    return out[:-2], int(out[-2])


@glibc_only
def test_kept_memory_is_not_faulted_in_again():
    (said,), kept = _minor_faults("keep")
    assert said == KEPT
    _, system = _minor_faults("system")
    # glibc's starting thresholds give the 128 MiB back at every free and fault it in again (~160,000 pages)
    assert system > 100 and kept * 20 < system, (kept, system)
    (said,), chosen = _minor_faults("keep", OPENMAE_MALLOC="system")
    assert said == "malloc as configured (OPENMAE_MALLOC=system)" and chosen * 20 > system


def test_the_users_allocator_settings_stand():
    assert _users_choice({}) is None
    assert _users_choice({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}) == "an allocator in LD_PRELOAD"
    assert _users_choice({"LD_PRELOAD": "/opt/libfoo.so"}) is None
    assert _users_choice({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}) == "malloc settings in the environment"
    assert _users_choice({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2"}) is None
    assert _users_choice({"MALLOC_ARENA_MAX": "2"}) == "malloc settings in the environment"


@glibc_only
def test_training_keeps_host_memory_and_says_so(tmp_path, datasets, caplog, monkeypatch):
    from helpers import tiny_pretrain

    from openmae.engine.pretrain import pretrain

    for name in [k for k in os.environ if k.startswith("MALLOC_")] + list(USER_SETTINGS):
        monkeypatch.delenv(name, raising=False)
    with caplog.at_level(logging.INFO, logger="openmae.train"):
        pretrain(tiny_pretrain(tmp_path, datasets, "train.epochs=1"))
    assert f"host memory: {KEPT}" in caplog.text
