"""One pass over each volume before training (``data.format=volume``): its own intensity scale
(``data.volume_norm``) and which of its slices hold enough of the body to train on (``data.min_foreground``).

MR intensities have no absolute unit: the same tissue reads 300 in one scanner's volume and 1,200 in another's, so
one mean / std for a folder leaves the scale to the scanner. ``volume_norm=zscore`` maps each volume to mean 0, std
1 over its foreground voxels (nnU-Net's MR normalisation); ``percentile`` maps its ``data.norm_percentiles``
(0.5th / 99.5th by default) to 0 and 1, values beyond them held at the bounds (a bright vessel or a metal artefact
does not set the scale). Statistics are per band where a slice's bands are separate images (a 4-D file's contrasts
read with ``data.fourth_axis=bands``, a colour DICOM), per volume otherwise.

The slices at a head or body scan's ends are mostly air: ``data.min_foreground=0.1`` with ``data.foreground=<value>``
leaves out the slices with fewer than 10% of their pixels above the value (in the file's units after ``data.clip``:
-500 HU for CT, 0 for skull-stripped MR), so that training does not spend its steps on empty images. Neighbouring
slices taken as bands still come from the whole volume.

The pass reads every slice once (in chunks of up to 2^25 voxels, a few volumes at a time on threads); its results
are kept per process (a list of volumes built again unchanged takes them whole, without a stat of their files), and
in ``data.volume_cache`` when set (a small JSON file per volume and setting, named by the file's path, size and
modification time), so that the next run reads no voxels for it."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from stat import S_ISLNK

import numpy as np

from openmae.data.images import BadImageError
from openmae.data.memo import Recent
from openmae.data.ranks import share, shared_map

log = logging.getLogger(__name__)

NORMS = ("none", "zscore", "percentile")
CHUNK_VOXELS = 2**25  # voxels read at once (128 MiB as float32)
SAMPLE_VOXELS = 2**21  # a band's voxels a volume's percentiles are taken from (every k-th foreground voxel)
THREADS = 8


@dataclass(frozen=True)
class Settings:
    """What a survey depends on besides the volume: ``data.volume_norm``, ``norm_percentiles``, ``foreground``,
    ``min_foreground``, and the ``clip`` the slices are read with (set by :class:`openmae.data.volumes.FileVolumes` from its own)."""

    norm: str = "none"
    percentiles: tuple[float, float] = (0.5, 99.5)
    foreground: float | None = None
    min_foreground: float = 0.0
    clip: tuple[float, float] | None = None

    @property
    def active(self) -> bool:
        return self.norm != "none" or self.min_foreground > 0


@dataclass(frozen=True)
class Survey:
    """A volume's ``kept`` slices (None: all) and per band its normalisation ``(x - shift) / scale``, then held to
    [0, 1] when ``bounded`` (percentile scaling); ``unreadable``: slices that could not be read (left out)."""

    kept: tuple[int, ...] | None
    shift: tuple[float, ...] = (0.0,)
    scale: tuple[float, ...] = (1.0,)
    bounded: bool = False
    unreadable: int = 0

    def apply(self, image):
        """``image`` (C, H, W) tensor normalised by this volume's scale."""
        if self.shift == (0.0,) and self.scale == (1.0,) and not self.bounded:
            return image
        shift = image.new_tensor(self.shift).view(-1, 1, 1)
        scale = image.new_tensor(self.scale).view(-1, 1, 1)
        out = (image - shift) / scale
        return out.clamp_(0.0, 1.0) if self.bounded else out


def _read(scan, picks: list[int], read_slab, bad: np.ndarray) -> list[tuple[list[int], np.ndarray]]:
    """(slices, (n, C, H, W) values) of ``picks``: read at once, or one by one when a damaged slice is among them
    (those that fail marked in ``bad``)."""
    try:
        return [(picks, read_slab(scan, picks))]
    except BadImageError:
        parts = []
        for k in picks:
            try:
                parts.append(([k], read_slab(scan, [k])))
            except BadImageError:
                bad[k] = True
        return parts


def survey_volume(scan, settings: Settings, read_slab) -> Survey:
    """One pass over ``scan``'s slices. ``read_slab(scan, picks)`` gives the picked slices as an (n, C, H, W)
    float32 array in the file's units (C: a slice's own bands). Raises :class:`BadImageError` when no slice of it
    can be read."""
    sums = squares = counts = None
    samples: list[list[np.ndarray]] = []
    fractions = np.zeros(scan.slices)
    bad = np.zeros(scan.slices, bool)
    start, run, stride = 0, 1, 1  # a first slice alone, then runs of up to CHUNK_VOXELS voxels
    while start < scan.slices:
        picks = list(range(start, min(start + run, scan.slices)))
        start = picks[-1] + 1
        for where, slab in _read(scan, picks, read_slab, bad):
            if settings.clip is not None:
                slab = np.clip(slab, *settings.clip)
            finite = np.isfinite(slab).all(axis=(1, 2, 3))
            bad[where] |= ~finite  # a slice holding NaN is left out, as the loader would skip it
            where, slab = [k for k, ok in zip(where, finite, strict=True) if ok], slab[finite]
            if not where:
                continue
            if sums is None:
                channels, pixels = slab.shape[1], slab.shape[2] * slab.shape[3]
                sums, squares, counts = np.zeros(channels), np.zeros(channels), np.zeros(channels)
                samples = [[] for _ in range(channels)]
                stride = max(1, math.ceil(scan.slices * pixels / SAMPLE_VOXELS))
                run = 1 if scan.samples > 1 else max(1, CHUNK_VOXELS // (channels * pixels))
            if settings.foreground is None:
                mask = np.ones((slab.shape[0], *slab.shape[2:]), bool)
            else:
                mask = (slab > settings.foreground).any(axis=1)  # (n, H, W): above it in any band
            fractions[where] = mask.mean(axis=(1, 2))
            if settings.norm == "none":  # slices chosen only: no statistics to gather
                continue
            values = slab.transpose(1, 0, 2, 3)[:, mask]  # (C, foreground pixels)
            sums += values.sum(axis=1, dtype=np.float64)
            squares += np.square(values, dtype=np.float64).sum(axis=1)
            counts += values.shape[1]
            if settings.norm == "percentile":
                for c, band in enumerate(values):
                    samples[c].append(band[::stride])
    if bad.all():
        raise BadImageError(f"{scan.path}: none of its {scan.slices} slices could be read")
    kept = None
    if settings.min_foreground > 0 or bad.any():
        kept = tuple(int(k) for k in np.flatnonzero(~bad & (fractions >= settings.min_foreground)))
    unreadable = int(bad.sum())
    if settings.norm == "none" or sums is None or not counts.all():  # no foreground at all: left unscaled
        return Survey(kept, unreadable=unreadable)
    if settings.norm == "zscore":
        mean = sums / counts
        std = np.sqrt(np.maximum(squares / counts - mean**2, 0.0))
        return Survey(kept, tuple(mean.tolist()), tuple(float(s) if s > 0 else 1.0 for s in std), unreadable=unreadable)
    low, high = np.array([np.percentile(np.concatenate(s), settings.percentiles) for s in samples]).T
    span = tuple(float(h - lo) if h > lo else 1.0 for lo, h in zip(low, high, strict=True))
    return Survey(kept, tuple(low.tolist()), span, bounded=True, unreadable=unreadable)


def _key(scan, settings: Settings, folders: dict[str, str] | None = None) -> str:
    """The survey's name: the volume file(s) by resolved path, size and modification time, the part read, the
    settings. A file that is not a link is its folder's resolved path and its name, each folder resolved once (what
    ``Path.resolve`` gives, without its ``lstat`` of every folder on the way and ``stat`` of the file for each of a
    DICOM series' hundreds of files: a round trip each on a network file system). ``folders``: resolved folders to
    use and add to, shared by the volumes of a build (a folder of NIfTI files: one resolution, not one a file)."""
    folders = {} if folders is None else folders
    stamps = []
    for f in scan.members or (scan.path,):
        stat = os.lstat(f)
        if S_ISLNK(stat.st_mode):
            where, stat = str(Path(f).resolve()), os.stat(f)
        else:
            folder, name = os.path.split(os.fspath(f))
            if folder not in folders:
                folders[folder] = os.path.realpath(folder)
            where = os.path.join(folders[folder], name)
        stamps.append((where, stat.st_size, stat.st_mtime_ns))
    what = repr((stamps, scan.kind, scan.axis, scan.rows, scan.cols, scan.volume, scan.samples, asdict(settings)))
    return hashlib.sha1(what.encode()).hexdigest()[:20]


# per process: key -> survey, for the volumes of recent builds (at least twice the largest build's volumes: a list
# grown by new files finds its older volumes' surveys; a Survey is a few hundred bytes)
_SURVEYS: Recent[str, Survey] = Recent(4096)
# per process: (what the scans were read from, settings, bad_files) -> every scan's survey, for a list of volumes
# surveyed again unchanged (a run's later builds of its training data), which then stats none of their files; the
# last few lists (a run builds its training files, and the kNN monitor's two lists)
_SURVEYED: Recent[tuple[str, Settings, str], list[Survey | None]] = Recent(8)


def _kept(path: Path) -> Survey | None:
    """The survey kept in ``path``, or None when it cannot be read back (edited, or written by another version of
    openmae): then the volume is surveyed again and the file replaced."""
    try:
        record = json.loads(path.read_text())
        return Survey(**{k: tuple(v) if isinstance(v, list) else v for k, v in record.items()})
    except (OSError, ValueError, TypeError, AttributeError) as err:
        log.warning("%s could not be read back (%s: %s); surveying the volume again", path, type(err).__name__, err)
        return None


def _stored(scan, settings: Settings, cache: str, read_slab, folders: dict[str, str]) -> tuple[Survey, str]:
    """(survey, where from: "memory", "cache" or "read"); ``folders``: :func:`_key`'s."""
    key = _key(scan, settings, folders)
    kept = _SURVEYS.get(key)  # one lookup: another thread's store may drop an entry between two
    if kept is not None:
        return kept, "memory"
    path = Path(cache) / f"survey-{scan.path.name.split('.')[0]}-{key}.json" if cache else None
    survey = _kept(path) if path is not None and path.is_file() else None
    origin = "cache"
    if survey is None:
        origin = "read"
        survey = survey_volume(scan, settings, read_slab)
        if path is not None:
            try:  # written whole, then renamed; a cache that cannot be written costs the next run a pass only
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
                partial.write_text(json.dumps(asdict(survey)))
                os.replace(partial, path)
            except OSError as err:
                log.warning("could not keep %s's survey in data.volume_cache=%s: %s", scan.path, cache, err)
    _SURVEYS[key] = survey
    return survey, origin


def survey_all(scans: list, settings: Settings, cache: str, read_slab, bad_files: str,
               memo: str = "") -> tuple[list[Survey | None], dict[str, int]]:
    """Each scan's :class:`Survey` (None for one none of whose slices could be read, with ``bad_files=skip``;
    ``fail``: raises), a few volumes at a time on threads (reading and decompressing release the GIL), and how many
    came from where ({"memory", "cache", "read"}: counts, over all ranks inside
    :func:`openmae.data.ranks.shared_by_ranks`, where each rank surveys every world-size-th volume; "ranks": how many
    shared the work). ``memo``: what ``scans`` were read from, files unchanged (the key of their headers, which
    already covers every file's size and time: :func:`openmae.data.volumes.read_headers`); the same scans surveyed
    again with the same settings come from memory whole, without the per-volume keys' stat of every file (a DICOM
    series' hundreds; a round trip each on a network file system)."""
    rank, world = share()
    whole = (memo, settings, bad_files)
    # from memory on every rank, or surveyed on every rank: the ranks' exchanges below must match
    if memo and all(shared_map(lambda _: whole in _SURVEYED, world)):
        return list(_SURVEYED[whole]), {"memory": len(scans), "cache": 0, "read": 0, "ranks": world}
    _SURVEYS.fit(2 * len(scans))
    threads = min(THREADS, os.cpu_count() or 1)
    # a lone process meeting an unreadable volume with bad_files=fail stops there; ranks first finish their parts
    # and exchange them, so that every rank raises the same (first) error and none is left waiting for another
    catch = () if bad_files == "fail" and world == 1 else (BadImageError,)
    folders: dict[str, str] = {}  # resolved once a build (threads may resolve one twice, alike)
    found = shared_map(lambda v: _stored(scans[v], settings, cache, read_slab, folders), len(scans), catch=catch,
                       threads=threads)
    unreadable = [item for item in found if isinstance(item, BadImageError)]
    if unreadable and bad_files == "fail":
        raise unreadable[0]
    found = [(None, "read") if isinstance(item, BadImageError) else item for item in found]
    if world > 1:  # the other ranks' surveys, for later builds in this process (rank 0's monitors), under this
        # rank's own keys: nodes' copies of the data may differ in their files' times (copied to each node's disk), so
        # another rank's key may not be the one this rank computes. A key stats each of a volume's files (a DICOM
        # series: hundreds), on threads as the surveys themselves: a network file system's stat waits
        theirs = [v for v, (survey, _) in enumerate(found) if v % world != rank and survey is not None]
        with ThreadPoolExecutor(threads) as pool:
            for v, key in zip(theirs, pool.map(lambda v: _key(scans[v], settings, folders), theirs), strict=True):
                _SURVEYS[key] = found[v][0]
    origins = {where: sum(origin == where for _, origin in found) for where in ("memory", "cache", "read")}
    origins["ranks"] = world
    surveys = [survey for survey, _ in found]
    if memo:
        _SURVEYED[whole] = surveys
    return list(surveys), origins
