"""3-D scans as 2-D training images (``data.format=volume``): every slice of every volume in a folder is an image,
in the scanner's units, so that MAE pretrains a 2-D ViT on CT, MR or microscopy stacks as they are stored.

Files (one volume each; a 2-D file is a volume of one slice):

- NIfTI (``.nii``, ``.nii.gz``, read with nibabel, ``openmae[medical]``): cut across ``data.slice_plane`` (axial,
  coronal or sagittal), found from the file's affine, so that the same plane is read from files stored in any axis
  order. A slice is shown in the radiological convention whatever the storage: rows run from the top of the body
  (superior; anterior for an axial slice) down, columns from the patient's right to their left (anterior to
  posterior for a sagittal slice). Voxel values are scaled by the header's ``scl_slope`` / ``scl_inter``. A slice
  whose pixels are not square (the through-plane spacing of a thick-slice scan in a coronal or sagittal cut) is
  resized along its coarser axis to square pixels, as the body's proportions need. An uncompressed ``.nii`` is
  memory-mapped (a slice reads its voxels only, in any plane); a ``.nii.gz`` has to be decompressed up to the slice
  for every read (0.3-1.2 s for a 512x512x160 CT), so ``data.volume_cache`` names a folder where each is
  decompressed once, on first read, to a ``.npy`` file that is memory-mapped from then on.
- Multi-frame DICOM (``.dcm``, ``.dicom``: an enhanced CT or MR, a dose grid, a cine loop): its frames in file
  order, each read alone from the file (pydicom decodes only that frame), in the modality's units (the rescale of
  the file, or of the frame's functional groups), MONOCHROME1 turned over as :mod:`openmae.data.dicom` does.
- A DICOM series stored a slice a file (how scanners and PACS export CT and MR): the single-frame files of one
  folder that share a Series Instance UID are one volume, their slices in order of position along the slices'
  normal (Image Position / Orientation Patient; else Instance Number; else file name), so that neighbouring
  slices are neighbours in the body whatever the files are called.
- Stacks as ``.npy`` or TIFF files (a microscope's z-stack): (D, H, W), slices along the first axis.

``model.in_chans`` > 1 makes each image out of that many neighbouring slices as its bands (2.5-D: with 3, the slice
and the one on either side), repeated at the volume's ends; a colour DICOM's frames are read with their own 3
bands instead. A volume's slices share its file's label (``data.name=imagefolder``)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from openmae.data.arrays import require_finite
from openmae.data.dicom import DICOM_SUFFIXES, dicom_values, no_image, open_dicom
from openmae.data.images import BadImageError
from openmae.data.volume_cache import cached_array

NIFTI_SUFFIXES = (".nii", ".nii.gz")
VOLUME_SUFFIXES = (*NIFTI_SUFFIXES, *DICOM_SUFFIXES, ".npy", ".tif", ".tiff")
PLANES = {"sagittal": 0, "coronal": 1, "axial": 2}  # the RAS axis a plane's slices are cut across
SQUARE_TOLERANCE = 0.01  # pixel spacings within 1% of each other count as square


@dataclass(frozen=True)
class Scan:
    """How to cut one volume file into slices, from its header.

    ``axis``: the stored axis the slices are cut across (NIfTI; 0 otherwise); ``rows`` / ``cols``: the stored axes
    a slice's rows and columns run along, and ``flip``: which of the two run backwards (NIfTI only); ``spacing``:
    the (row, column) pixel spacing in mm (1, 1 when unknown); ``samples``: bands a slice holds itself (3 for a
    colour DICOM, a 4-D NIfTI's length along its fourth axis with ``data.fourth_axis=bands``, else 1); ``stored``:
    a NIfTI's voxel layout (dtype, data offset, shape, order) and ``scale`` its (scl_slope, scl_inter), read with
    the header so that a slice read parses no header; ``series`` and
    ``position``: a single-frame DICOM's Series Instance UID and place along its slices' normal (None when it says
    none), from which a series' ``members`` (a file a slice) are put in order; ``volumes``: a 4-D NIfTI's length
    along its fourth axis, read as that many volumes (``volume``: which one) or as a slice's bands (``samples``)."""

    path: Path
    kind: str  # "nifti", "dicom", "series" (DICOM files a slice) or "stack"
    slices: int
    axis: int = 0
    rows: int = 1
    cols: int = 2
    flip: tuple[bool, bool] = (False, False)
    spacing: tuple[float, float] = (1.0, 1.0)
    samples: int = 1
    cache: str = ""  # a compressed NIfTI's data.volume_cache folder
    stored: tuple = ()
    scale: tuple[float, float] = (1.0, 0.0)
    series: str = ""
    position: float | None = None
    members: tuple[Path, ...] = ()
    volumes: int = 1  # a 4-D NIfTI's entries along its fourth axis
    volume: int = 0  # which of them this scan reads (data.fourth_axis=volumes)

    def file_of(self, slice_: int) -> Path:
        """The file holding slice ``slice_``."""
        return self.members[slice_] if self.members else self.path


def suffix_of(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _nibabel():
    try:
        import nibabel
    except ImportError:
        raise ImportError("NIfTI files are read with nibabel; pip install nibabel (or openmae[medical])") from None
    return nibabel


def _nifti_scan(path: Path, plane: str, cache: str, fourth_axis: str) -> Scan:
    nib = _nibabel()
    img = nib.load(path)
    shape = img.shape
    if len(shape) < 3 or any(n != 1 for n in shape[4:]):
        raise ValueError(f"a NIfTI image of shape {shape}; openmae reads (X, Y, Z) volumes and (X, Y, Z, T) series "
                         "of them (a time series, or contrasts: data.fourth_axis)")
    volumes = int(shape[3]) if len(shape) > 3 else 1
    ornt = nib.io_orientation(img.affine)  # per stored axis: the RAS axis it runs along and its direction (+1, -1)
    axis = int(np.flatnonzero(ornt[:, 0] == PLANES[plane])[0])
    a, b = (s for s in range(3) if s != axis)
    rows, cols = (a, b) if ornt[a, 0] > ornt[b, 0] else (b, a)  # rows along the later RAS axis (S over A over R)
    zooms = img.header.get_zooms()
    proxy = img.dataobj
    return Scan(path, "nifti", int(shape[axis]), axis, rows, cols,
                stored=(proxy.dtype.str, int(proxy.offset), tuple(proxy.shape), proxy.order),
                scale=(float(proxy.slope), float(proxy.inter)),
                # rows and columns run towards R, A, S lowering: stored axes that run up are read backwards
                flip=(bool(ornt[rows, 1] > 0), bool(ornt[cols, 1] > 0)),
                spacing=(float(zooms[rows]), float(zooms[cols])), cache=cache if suffix_of(path) == ".nii.gz" else "",
                volumes=volumes, samples=volumes if fourth_axis == "bands" else 1)


def _dicom_scan(path: Path) -> Scan:
    ds = open_dicom(path, pixels=False)
    if "Rows" not in ds:  # the header read without the pixel data: an image's has its size
        raise no_image(ds)
    return Scan(path, "dicom", int(ds.get("NumberOfFrames", 1) or 1), samples=int(ds.get("SamplesPerPixel", 1)),
                series=str(ds.get("SeriesInstanceUID", "")), position=_position(ds))


def _position(ds) -> float | None:
    """A slice's place along its normal: Image Position (Patient) on the cross product of Image Orientation
    (Patient)'s row and column directions; else its Instance Number; None when it has neither."""
    orientation, position = ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient")
    if orientation is not None and position is not None and len(orientation) == 6 and len(position) == 3:
        normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
        return float(normal @ np.asarray(position, float))
    number = ds.get("InstanceNumber")
    return float(number) if number is not None and number != "" else None


def assemble_series(scans: list[Scan], labels: list[int]) -> tuple[list[Scan], list[int]]:
    """``scans`` with the single-frame DICOM files of one folder and series made one volume (where the series'
    first file was), its slices in order of position (file names when a file says none); the rest as they are."""
    groups: dict[tuple[Path, str], list[int]] = {}
    for i, scan in enumerate(scans):
        if scan.kind == "dicom" and scan.slices == 1 and scan.series:
            groups.setdefault((scan.path.parent, scan.series), []).append(i)
    groups = {key: members for key, members in groups.items() if len(members) > 1}
    first = {members[0]: members for members in groups.values()}
    grouped = {i for members in groups.values() for i in members}
    out, out_labels = [], []
    for i, scan in enumerate(scans):
        if i in first:
            members = first[i]
            if all(scans[j].position is not None for j in members):
                members = sorted(members, key=lambda j: (scans[j].position, str(scans[j].path)))
            paths = tuple(scans[j].path for j in members)
            out.append(replace(scan, path=paths[0], kind="series", slices=len(paths), members=paths))
            out_labels.append(labels[i])
        elif i not in grouped:
            out.append(scan)
            out_labels.append(labels[i])
    return out, out_labels


def _stack_shape(path: Path) -> tuple[int, ...]:
    if path.suffix.lower() == ".npy":
        return np.load(path, mmap_mode="r", allow_pickle=False).shape
    try:
        import tifffile
    except ImportError:
        raise ImportError(f"{path}: TIFF stacks are read with tifffile; pip install tifffile (or openmae[geo])") from None
    with tifffile.TiffFile(path) as tif:
        return tuple(tif.series[0].shape)


def _stack_scan(path: Path) -> Scan:
    shape = _stack_shape(path)
    if len(shape) not in (2, 3):
        raise ValueError(f"an array of shape {shape}; a stack is (D, H, W), slices along the first axis, or one (H, W) slice")
    return Scan(path, "stack", shape[0] if len(shape) == 3 else 1, rows=len(shape) - 2, cols=len(shape) - 1)


def scan_volume(path: str | Path, plane: str = "axial", cache: str = "", fourth_axis: str = "volumes") -> Scan:
    """``path``'s :class:`Scan` (its header only is read); ``cache``: ``data.volume_cache``; ``fourth_axis``:
    ``data.fourth_axis`` (a 4-D NIfTI's scan reads its first volume, or all of them as bands). Raises
    :class:`BadImageError` on a file that is not a volume openmae reads, ImportError when the library its kind needs is missing."""
    path = Path(path)
    kind = suffix_of(path)
    try:
        if kind in NIFTI_SUFFIXES:
            return _nifti_scan(path, plane, cache, fourth_axis)
        if kind in DICOM_SUFFIXES:
            return _dicom_scan(path)
        return _stack_scan(path)
    except ImportError:
        raise
    except Exception as err:  # noqa: BLE001 - nibabel, pydicom and tifffile raise their own kinds on bad headers
        raise BadImageError(f"{path}: {type(err).__name__}: {err}") from None


def neighbours(slice_: int, count: int, channels: int) -> list[int]:
    """The ``channels`` slices centred on ``slice_`` (the later one of the middle two for an even count), held at
    the volume's ends: [0, 0, 1] for slice 0 of 3 bands."""
    start = slice_ - (channels - 1) // 2
    return [min(max(start + j, 0), count - 1) for j in range(channels)]


def _voxels(scan: Scan):
    """(stored voxels indexable by slices, slope, intercept): an uncompressed file memory-mapped, a compressed one
    from ``data.volume_cache`` when set, else nibabel's proxy (which decompresses up to what it reads and scales)."""
    if suffix_of(scan.path) == ".nii":  # nibabel's own slicing reads a slice across the storage order piece by piece
        dtype, offset, shape, order = scan.stored
        return np.memmap(scan.path, np.dtype(dtype), "r", offset, shape, order), *scan.scale
    if scan.cache:  # the whole file, decompressed once
        return cached_array(scan.path, scan.cache, lambda: _nibabel().load(scan.path).dataobj.get_unscaled()), *scan.scale
    return _nibabel().load(scan.path).dataobj, 1.0, 0.0


def _read_nifti(scan: Scan, picks: list[int]) -> np.ndarray:
    voxels, slope, inter = _voxels(scan)
    low, high = min(picks), max(picks) + 1
    window: list = [slice(None)] * 3 + [0] * (len(voxels.shape) - 3)
    window[scan.axis] = slice(low, high)
    if scan.volumes > 1:  # a 4-D file: one volume along its fourth axis, or all of them as the slice's bands
        window[3] = slice(None) if scan.samples > 1 else scan.volume
    slab = np.asarray(voxels[tuple(window)])  # the slices' voxels only
    if slope != 1 or inter != 0:  # scl_slope / scl_inter, as nibabel applies them
        slab = slab * slope + inter
    slab = np.moveaxis(slab, scan.axis, 0)  # (slices, stored a, stored b[, T])
    if slab.ndim == 4:
        slab = np.moveaxis(slab[picks[0] - low], -1, 0)  # (T, stored a, stored b): the fourth axis as bands
    else:
        slab = slab[[p - low for p in picks]]  # (C, stored a, stored b)
    inplane = [s for s in range(3) if s != scan.axis]
    if inplane.index(scan.rows) == 1:
        slab = slab.transpose(0, 2, 1)  # (C, rows, cols)
    return slab[:, ::-1 if scan.flip[0] else 1, ::-1 if scan.flip[1] else 1]


def _read_dicom(scan: Scan, picks: list[int]) -> np.ndarray:
    if scan.members:  # a series, a file a slice
        frames = [dicom_values(scan.members[p]) for p in picks]
    elif scan.slices == 1:  # a single-frame file: read whole
        frames = [dicom_values(scan.path)] * len(picks)
    else:
        header = open_dicom(scan.path, pixels=False)
        frames = [dicom_values(scan.path, p, header) for p in picks]
    return np.moveaxis(frames[0], -1, 0) if scan.samples > 1 else np.stack(frames)


def _read_stack(scan: Scan, picks: list[int]) -> np.ndarray:
    if scan.path.suffix.lower() == ".npy":
        array = np.load(scan.path, mmap_mode="r", allow_pickle=False)
        return array[picks] if array.ndim == 3 else np.stack([array] * len(picks))
    import tifffile

    with tifffile.TiffFile(scan.path) as tif:
        series = tif.series[0]
        if len(series.shape) == 2:
            return np.stack([series.asarray()] * len(picks))
        if len(series.pages) == scan.slices:  # a page a slice: only the pages needed are decoded
            return np.stack([series.pages[p].asarray() for p in picks])
        return series.asarray()[picks]


def square_pixels(slab: torch.Tensor, spacing: tuple[float, float]) -> torch.Tensor:
    """(C, H, W) resized along its coarser axis so that its pixels are square (bilinear; unchanged when they are)."""
    rows, cols = spacing
    if min(rows, cols) <= 0 or abs(rows / cols - 1) <= SQUARE_TOLERANCE:
        return slab
    fine = min(rows, cols)
    size = [max(1, round(slab.shape[1] * rows / fine)), max(1, round(slab.shape[2] * cols / fine))]
    return F.interpolate(slab[None], size=size, mode="bilinear", align_corners=False)[0]


def place(scan: Scan, slice_: int) -> str:
    """Where slice ``slice_`` of ``scan`` is, for messages: its file, volume (of a 4-D file) and slice."""
    volume = f"volume {scan.volume} of {scan.volumes}, " if scan.volumes > 1 and scan.samples == 1 else ""
    return f"{scan.file_of(slice_)} ({volume}slice {slice_} of {scan.slices})"


def read_raw(scan: Scan, picks: list[int]) -> np.ndarray:
    """Slices ``picks`` of ``scan`` as stored: (len(picks), H, W) float32 in the file's units, or a slice's own
    bands (C, H, W) when it has them. Raises :class:`BadImageError` when they cannot be read."""
    try:
        read = {"nifti": _read_nifti, "dicom": _read_dicom, "series": _read_dicom, "stack": _read_stack}[scan.kind]
        return np.ascontiguousarray(read(scan, picks), dtype=np.float32)
    except ImportError:
        raise
    # nibabel, pydicom, tifffile and their codecs raise these on damaged data (gzip: OSError / EOFError)
    except (OSError, ValueError, EOFError, RuntimeError, KeyError, IndexError, zlib.error) as err:
        raise BadImageError(f"{place(scan, picks[0])}: {type(err).__name__}: {err}") from None


def read_slab(scan: Scan, picks: list[int]) -> np.ndarray:
    """Slices ``picks`` as (n, C, H, W): C a slice's own bands (one slice read), else 1."""
    raw = read_raw(scan, picks)
    return raw[None] if scan.samples > 1 else raw[:, None]


def read_slices(scan: Scan, slice_: int, channels: int) -> torch.Tensor:
    """Slice ``slice_`` of ``scan`` as a (C, H, W) float32 tensor in the file's units: ``channels`` neighbouring
    slices as its bands (a colour DICOM frame: its own 3). Raises :class:`BadImageError` when it cannot be read or
    holds NaN or infinite values."""
    slab = read_raw(scan, [slice_] if scan.samples > 1 else neighbours(slice_, scan.slices, channels))
    require_finite(slab, place(scan, slice_))
    return square_pixels(torch.from_numpy(slab), scan.spacing)
