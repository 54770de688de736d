"""One run at a time in a run folder.

Two runs writing to one folder (a job submitted twice, a command started again in a second terminal, two resumes of
the same checkpoint) would each save checkpoints under the other's names and mix their metrics. The main rank holds
an advisory lock (``flock``) on ``<run folder>/.openmae-run.lock`` for the whole run; a second run finds it held and
stops, saying which process holds it. The kernel releases the lock when its process ends however it ends (SIGKILL
included), so a stale lock cannot block a resume. Where the file system has no locks (some parallel file systems
without their flock option) the run goes on unlocked, saying so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from openmae.engine.distributed import DistInfo, from_main

log = logging.getLogger("openmae.train")
LOCK_NAME = ".openmae-run.lock"
LOCK_TRIES = 5  # a tenth of a second apart

try:
    import fcntl
except ImportError:  # not POSIX: runs go unlocked
    fcntl = None  # type: ignore[assignment]


class RunFolderInUse(FileExistsError):
    """Another run holds the run folder's lock."""


_HELD: list[IO[str]] = []  # the lock files this process holds


def _close_in_child() -> None:
    """A forked process (a loader worker, a pool of band statistics) gets the open lock file too, and an flock lasts
    while any process has it open: closed in the child, the lock ends with the run, not with its last worker."""
    for handle in _HELD:
        with contextlib.suppress(OSError):
            handle.close()
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


def _acquire(run_dir: Path) -> tuple[IO[str] | None, str]:
    """(the open, locked file, or None when unlocked; who holds it when another process does, else "")."""
    if fcntl is None:
        return None, ""
    path = run_dir / LOCK_NAME
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")  # noqa: SIM115 (held open for the run: closing it releases the lock)
    except OSError as err:  # the run itself will say what is wrong with the folder
        log.warning("could not open %s to lock the run folder (%s); running without the lock", path, err)
        return None, ""
    try:
        for attempt in range(LOCK_TRIES):  # `openmae info` looks at the lock for an instant: tried again a moment
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == LOCK_TRIES - 1:
                    raise
                time.sleep(0.1)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "a process whose details were not written yet"
        handle.close()
        return None, holder
    except OSError as err:
        log.warning("the file system of %s does not lock files (%s); running without the lock that keeps a second run "
                    "out of this folder", run_dir, err)
        handle.close()
        return None, ""
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    _HELD.append(handle)
    return handle, ""


def held_by(run_dir: str | Path) -> str | None:
    """Who holds ``run_dir``'s lock now (None: no run there), looked at without keeping it: a shared lock taken and
    let go at once (a run starting in that instant tries again)."""
    path = Path(run_dir) / LOCK_NAME
    if fcntl is None or not path.is_file():
        return None
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or "a process whose details were not written yet"
        except OSError:
            return None
    return None


@contextlib.contextmanager
def run_lock(run_dir: str | Path, info: DistInfo) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block (the main rank takes it; every rank raises :class:`RunFolderInUse`
    alike when another run holds it)."""
    handle, holder = _acquire(Path(run_dir)) if info.is_main else (None, "")
    holder = from_main(holder, info)
    if holder:
        raise RunFolderInUse(f"{run_dir} is in use by another run ({holder}); wait for it to end, stop it, or give "
                             "this run a folder of its own (-o)")
    try:
        yield
    finally:
        if handle is not None:
            _HELD.remove(handle)
            handle.close()  # releases the lock; the file stays, naming the last run that held it
