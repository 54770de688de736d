"""A digest of files' sizes and modification times (``file_stamps``): what a list built from files (volume headers,
a probe's kept features) is keyed by, so that a file changed since is read again. A stat a file, threaded and shared
between the ranks where a stat waits (a network file system)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time

from openmae.data.filelist import FileList
from openmae.data.ranks import share, shared_map

STAMP_CHUNK = 1024  # files a digest of sizes and times covers: what the ranks exchange (a chunk, not a file)
STAMP_THREADS = 8  # chunks a rank stats at a time where a stat waits (a network file system's round trip)
STAMP_SLOW_S = 30e-6  # a stat slower than this (timed on a rank's first files) waits: threads, and the ranks share
# the stats; from a local disk or the page cache a stat takes 2-5 us of CPU, and threads only contend for the GIL
# (2.4x slower on 8 threads)


def stats_wait(files: FileList) -> bool:
    """Whether a stat of ``files`` waits (a network file system's round trip: then threads help), as each rank's
    first 32 stats of its first chunk time it; each rank's probe is exchanged, so that all decide alike."""

    def waits(rank: int) -> bool:
        first = range(rank * STAMP_CHUNK, min(len(files), rank * STAMP_CHUNK + min(STAMP_CHUNK, 32)))
        start = time.perf_counter()
        for i in first:
            with contextlib.suppress(OSError):
                os.stat(files.raw(i))
        return len(first) > 0 and (time.perf_counter() - start) / len(first) > STAMP_SLOW_S

    return any(shared_map(waits, share()[1]))


def file_stamps(files: FileList, slow: bool | None = None) -> str:
    """A digest of every file's size and modification time (a file changed since is read again: a stat a file, not a
    parse), in chunks of :data:`STAMP_CHUNK` files, :data:`STAMP_THREADS` chunks at a time where a stat waits. Inside
    :func:`openmae.data.ranks.shared_by_ranks`, when a rank's first stats wait (a network file system: one file
    system, the same times on every node), each rank stats every world-size-th chunk and the ranks exchange the
    chunks' digests; when none waits (a local disk, perhaps each node's own copy of the data, whose times may differ
    from node to node) each rank stats every file itself, so that the digest is the one this process computes alone
    (rank 0's later builds, outside the block, find what it read inside)."""

    def chunk(c: int) -> str:
        digest = hashlib.sha1()
        for i in range(c * STAMP_CHUNK, min(len(files), (c + 1) * STAMP_CHUNK)):
            try:
                stat = os.stat(files.raw(i))
                digest.update(b"%d,%d;" % (stat.st_size, stat.st_mtime_ns))
            except OSError:  # a missing file: its error comes from reading it
                digest.update(b"-;")
        return digest.hexdigest()

    count = -(-len(files) // STAMP_CHUNK)
    if stats_wait(files) if slow is None else slow:  # ``slow``: the caller's probe
        chunks = shared_map(chunk, count, threads=STAMP_THREADS)
    else:
        chunks = [chunk(c) for c in range(count)]
    return hashlib.sha1("".join(map(str, chunks)).encode()).hexdigest()
