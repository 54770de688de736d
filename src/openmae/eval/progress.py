"""How far a long pass over images has come (the features of a million training images for kNN or a cached probe,
an evaluation): a bar on a terminal, a log line every minute in a log file (a batch job's), on the main process
only. A pass shorter than a minute says nothing off a terminal."""

from __future__ import annotations

import datetime
import logging
import sys
import time
from collections.abc import Generator, Iterator

import torch.distributed as dist
from tqdm import tqdm

from openmae.data.loader import Batch

log = logging.getLogger(__name__)

LOG_EVERY_S = 60.0  # off a terminal: seconds between two lines


def on_screen() -> bool:
    """Whether the console is one a person watches, where a progress bar redraws in place: a terminal, or a Jupyter
    notebook's output (not a terminal, but it draws tqdm's bars) rather than a log file or a pipe."""
    return sys.stderr.isatty() or type(sys.stderr).__module__.startswith("ipykernel")


def reported(batches: Iterator[Batch], what: str, total: int | None) -> Generator[Batch, None, None]:
    """``batches`` as they come, reporting how many of ``total`` images were done (under torchrun: rank 0's part;
    ``total`` None: nothing). Close it when the loop ends early (``contextlib.closing``): its bar goes with it."""
    if total is None:
        yield from batches
        return
    if dist.is_available() and dist.is_initialized():
        if dist.get_rank() != 0:
            yield from batches
            return
        what = f"{what}, rank 0's part"
    if on_screen():
        with tqdm(total=total, desc=what, unit="img", leave=False, dynamic_ncols=True) as bar:
            for batch in batches:
                yield batch
                bar.update(batch.images.shape[0])
        return
    start = last = time.monotonic()
    done = 0
    for batch in batches:
        yield batch
        done += batch.images.shape[0]
        now = time.monotonic()
        if now - last >= LOG_EVERY_S and done < total:
            last = now
            rate = done / max(now - start, 1e-9)
            log.info("%s: %d of %d images (%.0f%%), %.0f images/s, %s left", what, done, total, 100 * done / total,
                     rate, datetime.timedelta(seconds=round((total - done) / rate)))
