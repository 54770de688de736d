"""Stop cleanly on a signal: a cluster's preemption or time-limit warning becomes a checkpoint and an exit.

Slurm sends SIGTERM at a job's time limit and on preemption (and a chosen signal earlier with ``--signal``);
torchrun forwards SIGTERM to its workers. The handler only records the signal; the training loop asks
:meth:`StopSignals.agreed` at points where every rank is at the same step, saves a checkpoint there and returns.
Later stop signals are only noted: under torchrun a worker gets the scheduler's SIGTERM and then the one torchrun
forwards, and the second must not cut the save short (SIGKILL still ends a run at once).

Ctrl-C (SIGINT, one of the default stop signals) is a stop signal too: the first saves and stops as above, a second
one stops at once as Python does (KeyboardInterrupt), for a user who cannot wait for the step to end. A terminal
sends it to every process of the foreground group (the run and its loader workers, which leave it to the run);
torchrun starts each worker in a session of its own and forwards the one SIGINT it gets. A process started with
SIGINT ignored (a background job of a shell script) goes on ignoring it.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterable, Mapping
from types import FrameType
from typing import Any

import torch

from openmae.engine.config import is_signal_name
from openmae.engine.distributed import DistInfo

log = logging.getLogger("openmae.train")


def signal_number(name: str) -> int:
    """``"SIGTERM"`` -> 15; a clear error for a name this platform does not have."""
    if not is_signal_name(name):
        raise ValueError(f"{name!r} is not a signal on this platform; use names such as SIGTERM or SIGUSR1")
    return int(getattr(signal, name))


def exit_code(result: dict[str, Any] | None) -> int:
    """0, or 128 + the signal's number when a run saved and stopped on a signal (what a shell reports for a
    process that signal ended), so that a job script does not go on as if training had finished."""
    stopped = (result or {}).get("stopped_by")
    return 128 + signal_number(stopped) if stopped else 0


def _kill_daemonic_children() -> None:
    """At exit, end the process's daemonic children (loader workers), not with SIGTERM. multiprocessing ends them with
    SIGTERM and then waits for them, but a worker forked during training leaves SIGTERM to the training process (it
    ignores it, or runs the recording handler it inherited), so a run that ended on an uncaught error, its loader's
    iterator kept alive by the traceback, waited on its workers forever instead of exiting. Registered after
    multiprocessing's own exit function (torch imports multiprocessing first), so it runs before it. Loader workers
    are asked to stop first (:func:`openmae.data.loader.end_all_workers`); SIGKILL ends what is left."""
    from openmae.data.loader import end_all_workers  # the data package does not import the engine

    end_all_workers()
    for child in multiprocessing.active_children():
        if child.daemon:
            with contextlib.suppress(OSError, ValueError):
                child.kill()


@functools.cache  # once a process
def _kill_daemonic_children_at_exit() -> None:
    atexit.register(_kill_daemonic_children)


class StopSignals:
    """Context manager: while active, the named signals are recorded instead of ending the process.

    Handlers can only be installed from the main thread; elsewhere (a notebook's worker thread) nothing is
    installed and :attr:`received` stays None.
    """

    def __init__(self, names: Iterable[str]) -> None:
        self.numbers = [signal_number(n) for n in names]
        self.received: str | None = None
        self.received_at: float | None = None  # time.monotonic() of the first signal
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if self.numbers:
            _kill_daemonic_children_at_exit()
        if threading.current_thread() is threading.main_thread():
            for number in self.numbers:
                if number == signal.SIGINT and signal.getsignal(number) == signal.SIG_IGN:
                    continue  # started to ignore Ctrl-C (a shell's background job): it still does
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous.clear()

    def _handle(self, number: int, frame: FrameType | None) -> None:
        name = signal.Signals(number).name
        if self.received is None:
            self.received, self.received_at = name, time.monotonic()
            said = "Ctrl-C (SIGINT)" if number == signal.SIGINT else name
            at_once = "Ctrl-C again stops at once" if signal.SIGINT in self._previous else "SIGKILL stops at once"
            log.warning("%s received: saving a checkpoint at the next step where all processes agree, then stopping "
                        "(%s, without saving)", said, at_once)
        elif number == signal.SIGINT:  # Ctrl-C after a stop was asked for: the user will not wait for the save
            log.warning("Ctrl-C again: stopping at once, without saving")
            raise KeyboardInterrupt

    _handle.stops_training = True  # type: ignore[attr-defined]  # loader workers ignore signals so handled

    def agreed(self, info: DistInfo) -> str | None:
        """The signal to stop for if any process received one, else None. A collective when distributed: call it
        at the same step on every rank."""
        if not info.enabled:
            return self.received
        import torch.distributed as dist

        # a rank's index into self.numbers + 1 (0: nothing); the max over ranks names one of the signals received
        code = 0 if self.received is None else self.numbers.index(signal_number(self.received)) + 1
        flag = torch.tensor([code], device=info.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        code = int(flag.item())
        return None if code == 0 else signal.Signals(self.numbers[code - 1]).name


def torchrun_grace_warning(seconds: float, env: Mapping[str, str] | None = None) -> str | None:
    """A warning when a stop took more than half the time torchrun gives its workers after forwarding a signal
    (its --shutdown-timeout / TORCH_ELASTIC_SHUTDOWN_TIMEOUT, 30 s by default) before it kills them; None
    outside torchrun or with time to spare. ``seconds``: from the signal to the saved checkpoint."""
    env = os.environ if env is None else env
    if "TORCHELASTIC_RUN_ID" not in env:
        return None
    # torchrun's --shutdown-timeout flag does not reach the workers; the variable does when it was exported
    try:
        grace = float(env.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", 30))
    except ValueError:  # torchrun itself would have refused it; nothing to compare with
        return None
    if seconds <= grace / 2:
        return None
    return (f"the stop took {seconds:.1f} s from the signal to the saved checkpoint; torchrun kills its workers "
            f"{grace:g} s after it forwards a signal (--shutdown-timeout, TORCH_ELASTIC_SHUTDOWN_TIMEOUT), so a "
            "slower save would be lost: raise that timeout, or lower train.log_every_steps (the processes agree to "
            "stop at log steps)")
