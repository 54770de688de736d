"""``os.stat`` and ``os.lstat`` made to wait, as a network file system's round trip does, and counted: what the
benchmarks of per-file metadata (survey keys, rebuilt volume lists) time their code under."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator


@contextlib.contextmanager
def slow_stats(latency_ms: float) -> Iterator[list[int]]:
    """Within the block, each ``os.stat`` / ``os.lstat`` sleeps ``latency_ms`` first; yields ``[calls]``, counted."""
    stat, lstat = os.stat, os.lstat
    calls = [0]

    def delayed(real):
        def call(*args, **kwargs):
            calls[0] += 1
            if latency_ms:
                time.sleep(latency_ms / 1e3)
            return real(*args, **kwargs)
        return call

    os.stat, os.lstat = delayed(stat), delayed(lstat)
    try:
        yield calls
    finally:
        os.stat, os.lstat = stat, lstat
