"""A list of volume files as a dataset of 2-D slices (``data.format=volume``): their headers read once (kept in
``data.volume_cache`` across runs, shared by torchrun's ranks) and every slice an item, optionally surveyed for
per-volume normalisation and slice selection. One file's header and slices: :mod:`openmae.data.scans`."""

from __future__ import annotations

import bisect
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from openmae.data.arrays import clipped
from openmae.data.filelist import FileList
from openmae.data.header_cache import HeaderShards
from openmae.data.images import BadImageError
from openmae.data.memo import Recent
from openmae.data.ranks import keeps_for_node, share, shared_map
from openmae.data.scans import Scan, assemble_series, place, read_slab, read_slices, scan_volume, suffix_of
from openmae.data.stamps import STAMP_THREADS, file_stamps, stats_wait
from openmae.data.survey import Settings, Survey, survey_all

log = logging.getLogger(__name__)


class Headers(NamedTuple):
    """What :func:`read_headers` gives: the volumes, their labels, the files that could not be read, and ``key``,
    what they were read from (the files, their sizes and times, the settings), under which they are kept."""

    scans: list[Scan]
    labels: list[int]
    failed: list[BadImageError]
    key: str


# per process: Headers.key -> headers, of the last few lists (a run's training files and its kNN monitor's two lists)
_HEADERS: Recent[str, Headers] = Recent(4)


def _record(found: Scan | BaseException) -> dict[str, Any]:
    """What a header said, as :class:`openmae.data.header_cache.HeaderShards` keeps it (the path is the file's own)."""
    if isinstance(found, BaseException):
        return {"error": str(found)}
    scan = {f.name: getattr(found, f.name) for f in fields(Scan) if f.name != "path"}
    return {"scan": {**scan, "members": [str(m) for m in found.members]}}


def _from_record(path: Path, record: dict[str, Any]) -> Scan | BadImageError | None:
    """:func:`_record` read back for ``path``; None when it does not describe a :class:`Scan` of this version."""
    if "error" in record:
        return BadImageError(str(record["error"]))
    try:
        kept = dict(record["scan"])
        for key in ("flip", "spacing", "scale"):
            kept[key] = tuple(kept[key])
        kept["members"] = tuple(map(Path, kept["members"]))
        stored = kept["stored"]  # (dtype, offset, shape, order), or empty
        kept["stored"] = (stored[0], stored[1], tuple(stored[2]), stored[3]) if stored else ()
        return Scan(path, **kept)
    except (KeyError, TypeError, ValueError, IndexError):
        return None


def _scanned(files: FileList, plane: str, cache: str, fourth_axis: str, slow: bool) -> list[Scan | BaseException]:
    """Each file's :func:`scan_volume` (or its error), shared by the ranks; with ``data.volume_cache``, the headers
    kept there for files unchanged since (:mod:`openmae.data.header_cache`), the others read and then kept, looked
    up on threads where a stat waits (``slow``: :func:`stats_wait`)."""

    def read(i: int) -> Scan:
        return scan_volume(files[i], plane, cache, fourth_axis)

    # processes, not threads: parsing a header holds the GIL (2,000 CT slice headers from the page cache: 1.3-2.3 ms
    # a file on one thread, 6.4-6.6 ms on eight)
    if not cache:
        return shared_map(read, len(files), (BadImageError, ImportError), processes=True, what="volume headers")
    shards = HeaderShards(cache, f"{plane}|{fourth_axis}")
    kept = shared_map(lambda i: shards.get(files[i]), len(files),  # a stat each
                      threads=STAMP_THREADS if slow else 1)
    found: list[Scan | BaseException | None] = [
        None if record is None or isinstance(record, BaseException) else _from_record(files[i], record)
        for i, record in enumerate(kept)]
    todo = [i for i, item in enumerate(found) if item is None]
    for i, item in zip(todo, shared_map(lambda j: read(todo[j]), len(todo), (BadImageError, ImportError),
                                        processes=True, what="volume headers"), strict=True):
        found[i] = item
    if todo and keeps_for_node():  # every rank has every header now: one a node keeps the new ones
        shards.put((files[i], _record(found[i])) for i in todo if not isinstance(found[i], ImportError))
    if files:
        log.info("volume headers: %d read, %d kept in data.volume_cache (unchanged files)", len(todo),
                 len(files) - len(todo))
    return found  # type: ignore[return-value]


def read_headers(files: Sequence[Path], labels: Sequence[int] | np.ndarray | None, plane: str, cache: str,
                 fourth_axis: str) -> Headers:
    """The volumes of ``files`` (a 4-D file's volumes one by one, the files of a DICOM series one volume:
    :func:`assemble_series`), their labels, and the errors of the files whose headers could not be read, in file
    order. Read once per process for the same files, unchanged, and settings (a run builds its training files again to
    measure their statistics and for its kNN monitor: a header of a DICOM slice takes 1.5 ms, so 300,000 slice files
    took 7.5 minutes a build), keyed by :func:`file_stamps`; inside :func:`openmae.data.ranks.shared_by_ranks` each
    rank reads every world-size-th header (and, where a stat waits, stats every world-size-th chunk of files) and the
    ranks exchange them."""
    files = files if isinstance(files, FileList) else FileList(files)
    labels = None if labels is None else np.asarray(labels, dtype=np.int64)
    slow = stats_wait(files)  # one probe for the stamps and the kept headers' lookups
    key = "|".join((files.digest(), file_stamps(files, slow), "" if labels is None else
                    hashlib.sha1(labels.tobytes()).hexdigest(), plane, cache, fourth_axis))
    # kept on every rank, or read again on every rank: a rank whose files changed alone (its node's copy) must not
    # read while the others, their headers kept, have gone on to the next exchange
    if all(shared_map(lambda _: key in _HEADERS, share()[1])):
        return _HEADERS[key]
    found = _scanned(files, plane, cache, fourth_axis, slow)
    scans: list[Scan] = []
    scan_labels: list[int] = []
    failed: list[BadImageError] = []
    for i, scan in enumerate(found):
        if isinstance(scan, ImportError):  # the library a kind of file needs: a stop on every rank
            raise scan
        if isinstance(scan, BadImageError):
            failed.append(scan)
            continue
        each = scan.volumes if scan.samples == 1 else 1  # a 4-D file read as volumes: each one in turn
        scans += [replace(scan, volume=v) for v in range(each)]
        scan_labels += [int(labels[i]) if labels is not None else -1] * each
    _HEADERS[key] = Headers(*assemble_series(scans, scan_labels), failed, key)
    return _HEADERS[key]


class FileVolumes:
    """Every slice of a list of volume files as an image (``data.format=volume``): item ``i`` is a slice of the
    volume its index falls in, in file order then slice order (a DICOM series stored a file a slice is one volume:
    :func:`assemble_series`). The headers are read here (:func:`read_headers`); a file whose header cannot be read is left out
    (logged) with ``bad_files=skip``, and stops the run with ``fail``. ``clip``: ``data.clip``; ``survey``: the
    per-volume normalisation and slice selection settings (:mod:`openmae.data.survey`), for which every volume is
    read once here when they ask for either."""

    def __init__(self, files: Sequence[Path], labels: Sequence[int] | np.ndarray | None, channels: int,
                 classes: list[str], plane: str = "axial", bad_files: str = "skip", cache: str = "",
                 clip: tuple[float, float] | None = None, fourth_axis: str = "volumes",
                 survey: Settings | None = None) -> None:
        self.channels, self.classes, self.clip = channels, classes, clip
        scans, scan_labels, failed, headers_key = read_headers(files, labels, plane, cache, fourth_axis)
        if failed and bad_files == "fail":
            raise failed[0]
        if failed:
            log.warning("%d of %d volume files could not be read and are left out: %s", len(failed), len(files),
                        "; ".join(map(str, failed[:3])))
        for scan in scans:
            if scan.samples > 1 and scan.samples != channels:
                what = (f"a 4-D NIfTI of {scan.volumes} volumes read as bands (data.fourth_axis=bands: {scan.samples} "
                        "bands a slice)" if scan.volumes > 1 else f"colour frames ({scan.samples} bands a slice)")
                raise ValueError(f"{scan.path} holds {what}, but the model takes "
                                 f"model.in_chans={channels}; set model.in_chans={scan.samples}")
        self.scans, self.labels = list(scans), list(scan_labels)
        gzipped = sum(suffix_of(s.path) == ".nii.gz" for s in self.scans)
        if gzipped and not cache:
            log.warning("%d .nii.gz volumes: each slice read decompresses its file up to the slice (0.3-1.2 s for a "
                        "512x512x160 CT); set data.volume_cache=<folder> to decompress each once onto disk", gzipped)
        self.surveys: list[Survey] | None = None
        origins = None
        if survey is not None and survey.active:  # surveyed in the units the slices are read in: clipped alike
            survey = replace(survey, clip=None if clip is None else tuple(clip))
            origins = self._survey(survey, cache, bad_files, headers_key)
        self.counts = [s.slices if not self.surveys or self.surveys[v].kept is None else len(self.surveys[v].kept)
                       for v, s in enumerate(self.scans)]  # each volume's items
        self.ends = np.cumsum(self.counts).tolist()  # item index just past each volume's items
        if origins is not None:
            log.log(logging.DEBUG if origins["memory"] == len(self.scans) else logging.INFO,
                    "volumes surveyed: %d slices of %d volumes, %d kept (data.min_foreground=%g of pixels above "
                    "data.foreground=%s; %d unreadable); data.volume_norm=%s; %d volumes read now, %d from "
                    "data.volume_cache%s", sum(scan.slices for scan in self.scans), len(self.scans), len(self),
                    survey.min_foreground, survey.foreground, sum(s.unreadable for s in self.surveys), survey.norm,
                    origins["read"], origins["cache"],
                    f" (shared by {origins['ranks']} ranks)" if origins["ranks"] > 1 else "")

    def _survey(self, settings: Settings, cache: str, bad_files: str, headers_key: str) -> dict[str, int]:
        """Survey every volume (:func:`openmae.data.survey.survey_all`), leaving out those none of whose slices
        reads; returns how many surveys came from where."""
        surveys, origins = survey_all(self.scans, settings, cache, read_slab, bad_files, memo=headers_key)
        lost = [str(scan.path) for scan, found in zip(self.scans, surveys, strict=True) if found is None]
        if lost:
            log.warning("%d of %d volumes have no slice that can be read and are left out: %s", len(lost),
                        len(self.scans), "; ".join(lost[:3]))
        keep = [v for v, found in enumerate(surveys) if found is not None]
        self.scans, self.labels = [self.scans[v] for v in keep], [self.labels[v] for v in keep]
        self.surveys = [surveys[v] for v in keep]
        return origins

    def __len__(self) -> int:
        return self.ends[-1] if self.ends else 0

    def _where(self, index: int) -> tuple[int, int]:
        """(volume, slice) of item ``index``."""
        v = bisect.bisect_right(self.ends, index)
        offset = index - (self.ends[v - 1] if v else 0)
        kept = self.surveys[v].kept if self.surveys else None
        return v, offset if kept is None else kept[offset]

    def locate(self, index: int) -> tuple[Scan, int, int]:
        """(volume, slice, label) of item ``index``."""
        v, slice_ = self._where(index)
        return self.scans[v], slice_, self.labels[v]

    def volume_items(self) -> list[range]:
        """The items of each volume file, in order (a 4-D file's volumes together: a time series' volumes are near
        copies of each other)."""
        spans: list[range] = []
        for v, (scan, end) in enumerate(zip(self.scans, self.ends, strict=True)):
            start = end - self.counts[v]
            if v and scan.volume > 0 and self.scans[v - 1].path == scan.path:
                start = spans.pop().start
            spans.append(range(start, end))
        return spans

    def middle(self, volume: int) -> int:
        """The item of volume ``volume``'s middle slice (of those kept)."""
        return (self.ends[volume - 1] if volume else 0) + self.counts[volume] // 2

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        v, slice_ = self._where(index)
        image = clipped(read_slices(self.scans[v], slice_, self.channels), self.clip)
        return (self.surveys[v].apply(image) if self.surveys else image), self.labels[v]

    def view(self, index: int) -> tuple[np.ndarray, int]:
        """Item ``index`` as a (C, H, W) array, for a crop to cut (:class:`openmae.data.arrays.MappedCrop`)."""
        image, label = self.load(index)
        return image.numpy(), label

    def describe(self, index: int) -> str:
        scan, slice_, _ = self.locate(index)
        return place(scan, slice_)

    def file(self, index: int) -> tuple[Path, int]:
        scan, slice_, label = self.locate(index)
        return scan.file_of(slice_), label
