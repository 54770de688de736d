"""``data.volume_cache``: a compressed volume (a ``.nii.gz``) decompressed once into a ``.npy`` file of a cache folder
and memory-mapped from there, instead of decompressed up to the slice on every read of a slice (gzip has no index).

The file is named by the volume's path, size and modification time (a changed volume is decompressed again), written
whole under another name and then renamed (a worker reading meanwhile, or a crash, never sees half a file), and
decompressed by one process at a time: the loader's workers, the survey's threads and the ranks of a node that want
the same volume at once (the first batches of a run: every worker meets the volumes not yet in the cache) wait for
the first instead of each decompressing it again."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

try:
    import fcntl  # POSIX only: elsewhere a volume may be decompressed twice at once (see _first_of_many)
except ImportError:
    fcntl = None


class VolumeCacheError(Exception):
    """The decompressed volume could not be written to ``data.volume_cache``: a stop, not a skipped file."""


def cached_array(source: Path, cache: str, read: Callable[[], np.ndarray]) -> np.ndarray:
    """``read()`` (the whole of ``source``, decompressed), kept in the folder ``cache`` on the first call and
    memory-mapped from there on this and every later call, in any process."""
    stat = source.stat()
    key = hashlib.sha1(f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = Path(cache) / f"{source.name.split('.')[0]}-{key}.npy"
    if not target.is_file():
        with _first_of_many(target):
            if not target.is_file():  # not written by another process while this one waited
                _write(np.asanyarray(read()), target, source, cache)
    return np.load(target, mmap_mode="r")


def _write(array: np.ndarray, target: Path, source: Path, cache: str) -> None:
    partial = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as fh:
            np.save(fh, array)
        os.replace(partial, target)
    except OSError as err:
        with contextlib.suppress(OSError):  # not there, or its folder could not be made
            partial.unlink()
        raise VolumeCacheError(f"could not write {source}'s voxels to data.volume_cache={cache}: {err}; "
                               "free space there, name another folder, or unset data.volume_cache") from None


@contextlib.contextmanager
def _first_of_many(target: Path) -> Iterator[None]:
    """Held by one process (or thread) at a time for ``target``: an advisory ``flock`` on a lock file beside it,
    removed once the target is written (a process still waiting on the removed file then finds the target). Where
    no lock can be taken (no ``fcntl``, a file system without locks, a folder that cannot be written: reported by
    the write), the work is done unguarded, as a duplicate at worst."""
    lock = target.with_name(f"{target.name}.lock")
    if fcntl is None:
        yield
        return
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        if target.is_file():
            with contextlib.suppress(OSError):
                lock.unlink()
        os.close(fd)
