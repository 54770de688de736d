"""``data.volume_cache`` also keeps what each volume file's header said, so that a run's start does not parse every
header again: a DICOM slice file's header takes about 1.5 ms to parse, so a set of 300,000 slice files took 7.5
minutes at every run's start (every new process) before its first step; a kept one costs a stat of the file.

One JSON file a folder of volume files (a DICOM series is a folder of files), named by the folder and the settings
that change what a header reads as; in it, per file name, the file's size and modification time when it was read
and what was read: the volume's description, or the reason it could not be read (an unreadable file is not parsed
again either while it stays the same). A file whose size or time changed is read again. Files are written whole under
another name and renamed; a record that cannot be read back (edited, another openmae version) is read again."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
VERSION = 1  # of the records' layout: another one reads every header again


class HeaderShards:
    """The kept headers of one build's files under ``cache`` for the settings ``settings`` (a string: a header reads
    differently with another ``data.slice_plane`` or ``data.fourth_axis``), a folder's file read when first needed."""

    def __init__(self, cache: str, settings: str) -> None:
        self.cache, self.settings = Path(cache), settings
        self._folders: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()  # lookups run on threads (a network file system's stat waits)

    def _path(self, folder: str) -> Path:
        key = hashlib.sha1(f"{folder}|{self.settings}|{VERSION}".encode()).hexdigest()[:16]
        return self.cache / f"headers-{Path(folder).name or 'root'}-{key}.json"

    def _records(self, folder: str) -> dict[str, Any]:
        with self._lock:
            if folder in self._folders:
                return self._folders[folder]
        path = self._path(folder)
        try:
            records = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError) as err:
            log.warning("%s could not be read back (%s); its folder's volume headers are read again", path, err)
            records = {}
        with self._lock:
            return self._folders.setdefault(folder, records if isinstance(records, dict) else {})

    def get(self, path: Path) -> dict[str, Any] | None:
        """What ``path``'s header said when it was read (``{"scan": ...}`` or ``{"error": ...}``), or None when it
        was not kept or the file changed since (its size or time)."""
        try:
            stat = os.stat(path)
        except OSError:  # a missing file: reading it says so
            return None
        record = self._records(os.path.dirname(os.path.abspath(path))).get(path.name)
        if not isinstance(record, dict) or record.get("stamp") != [stat.st_size, stat.st_mtime_ns]:
            return None
        return record

    def put(self, read: Iterable[tuple[Path, dict[str, Any]]]) -> None:
        """Keep what was read (``(path, {"scan": ...} or {"error": ...})``), folder by folder; a cache that cannot
        be written costs the next run the reading only."""
        changed: dict[str, dict[str, Any]] = {}
        for path, record in read:
            try:
                stat = os.stat(path)
            except OSError:
                continue
            folder = os.path.dirname(os.path.abspath(path))
            records = changed.setdefault(folder, dict(self._records(folder)))
            records[path.name] = {"stamp": [stat.st_size, stat.st_mtime_ns], **record}
        for folder, records in changed.items():
            target = self._path(folder)
            # a name of this process's own: on a disk the nodes share, each node's first rank writes the record
            partial = target.with_name(f"{target.name}.{socket.gethostname()}.{os.getpid()}.partial")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                partial.write_text(json.dumps(records))
                os.replace(partial, target)
            except OSError as err:
                log.warning("could not keep the volume headers of %s in data.volume_cache=%s: %s", folder, self.cache,
                            err)
                with contextlib.suppress(OSError):
                    partial.unlink()
                return
            with self._lock:
                self._folders[folder] = records
