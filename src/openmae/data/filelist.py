"""The paths of a dataset's files packed into two arrays, for folders of millions of files.

A Python list of ``Path`` objects costs about 340 bytes a file (ImageNet's 1.28 million training images: 410 MB in
every process), and a loader worker that reads an item through it writes the object's reference count, which copies
the memory page the object sits on out of the memory the worker shares with the training process: after an epoch
every worker holds its own copy of the whole list (the reason PyTorch's documentation advises numpy arrays over
lists of objects in a dataset). :class:`FileList` keeps the paths' bytes in one numpy array and their ends in another
(about 60 bytes a file for ImageNet's paths), which reading never writes, so forked workers keep sharing them, and a
spawned worker receives them as two buffers. A ``Path`` is built when an item is asked for."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import overload

import numpy as np


class FileList(Sequence[Path]):
    """A read-only sequence of paths (``os.fsencode``d, so names in any encoding survive), equal to a list or tuple
    of the same paths."""

    def __init__(self, paths: Iterable[str | os.PathLike[str]] = ()) -> None:
        encoded = [os.fsencode(p) for p in paths]
        self._ends = np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)))  # (N,) end of path i
        self._bytes = np.frombuffer(b"".join(encoded), np.uint8)  # every path's bytes, one after the other

    @classmethod
    def concat(cls, parts: Iterable[FileList]) -> FileList:
        """The paths of ``parts`` one list after the other."""
        parts = list(parts)
        joined = cls()
        offsets = np.cumsum([0] + [len(p._bytes) for p in parts[:-1]], dtype=np.int64)
        joined._ends = np.concatenate([np.zeros(0, np.int64)] + [p._ends + o for p, o in zip(parts, offsets)])
        joined._bytes = np.concatenate([np.zeros(0, np.uint8)] + [p._bytes for p in parts])
        return joined

    def __len__(self) -> int:
        return len(self._ends)

    @overload
    def __getitem__(self, index: int) -> Path: ...

    @overload
    def __getitem__(self, index: slice) -> FileList: ...

    def __getitem__(self, index: int | slice) -> Path | FileList:
        if isinstance(index, slice):
            return FileList(self[i] for i in range(*index.indices(len(self))))
        n = len(self._ends)
        if not -n <= index < n:
            raise IndexError(f"index {index} is out of range for a list of {n} files")
        return Path(os.fsdecode(self.raw(index % n)))

    def raw(self, index: int) -> bytes:
        """Path ``index`` as the bytes it was given as (what ``os`` functions take, without building a ``Path``)."""
        start = int(self._ends[index - 1]) if index else 0
        return self._bytes[start : int(self._ends[index])].tobytes()

    def __iter__(self) -> Iterator[Path]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FileList):
            return np.array_equal(self._ends, other._ends) and np.array_equal(self._bytes, other._bytes)
        if isinstance(other, list | tuple):
            return len(other) == len(self) and all(a == Path(b) for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to lists, which are not hashable either

    def __repr__(self) -> str:
        shown = ", ".join(str(p) for p in self[:2])
        return f"FileList({len(self)} files: {shown}{', ...' if len(self) > 2 else ''})"

    def digest(self) -> str:
        """A hash of the paths in their order (what identifies a dataset's files in memos and between ranks)."""
        return hashlib.sha1(self._ends.tobytes() + self._bytes.tobytes()).hexdigest()

    @property
    def nbytes(self) -> int:
        """Memory the list holds (its two arrays)."""
        return self._bytes.nbytes + self._ends.nbytes
