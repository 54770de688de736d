"""Per-process memos of the data builds that keep only what recent builds used.

A run builds its training files more than once (band statistics, the kNN monitor), and each build finds the volume
headers and surveys of the one before in memory. A long-lived process (a notebook building a growing dataset again
and again) would otherwise keep every older list as well: the headers of 250,000 DICOM slice files are tens of MB a
list. ``functools.lru_cache`` cannot serve here: the builds look a key up on every rank before deciding to read
(:func:`openmae.data.ranks.shared_map`), and fill the memo from threads and from other ranks' results."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Recent(Generic[K, V]):
    """A mapping that keeps the ``size`` entries last stored or read, dropping the least recently used beyond them.
    Thread-safe (surveys are stored from a build's threads). :meth:`fit` raises the size to hold a build whole."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"a memo must keep at least one entry, got size={size}")
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, key: K) -> V:
        with self._lock:
            value = self._items[key]
            self._items.move_to_end(key)
            return value

    def __setitem__(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def get(self, key: K, default: V | None = None) -> V | None:
        with self._lock:
            if key not in self._items:
                return default
            self._items.move_to_end(key)
            return self._items[key]

    def fit(self, count: int) -> None:
        """Keep at least ``count`` entries from now on (a build's volumes, each with its own survey)."""
        with self._lock:
            self.size = max(self.size, count)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
