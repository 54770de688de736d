"""DICOM files (X-ray, CT and MR images) as arrays for ``data.format=array``: one image a file, read with pydicom
and returned in the scanner's units, so that every file of a folder is on one scale.

- The modality LUT is applied (``RescaleSlope`` / ``RescaleIntercept``: a CT's stored values become Hounsfield
  units), as pydicom's ``apply_modality_lut`` does.
- MONOCHROME1 images (a radiograph where a higher value is darker) are inverted over their value range, so that a
  folder that mixes them with MONOCHROME2 images reads brighter-is-higher throughout.
- Colour images come as RGB (pydicom converts YBR), laid out (H, W, 3).
- A file of several frames (an enhanced CT or MR, a dose grid, a cine loop) is refused by ``data.format=array``
  and read frame by frame, as slices, by ``data.format=volume`` (:mod:`openmae.data.scans`); the rescale then
  comes from the frame's functional groups when the file keeps it there. An RT dose grid reads in Gy.
- Compressed transfer syntaxes are decoded by pydicom's plugins: RLE natively, JPEG 2000 through Pillow, JPEG
  lossless / extended through pylibjpeg (``openmae[medical]``); a missing decoder stops the run saying which.

The window / level (VOI LUT) is a display setting and is not applied: the bands are normalised by ``data.mean`` /
``data.std`` like any array's."""

from __future__ import annotations

from pathlib import Path

import numpy as np

DICOM_SUFFIXES = (".dcm", ".dicom")
PLUGINS = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (or openmae[medical]; JPEG-LS: pyjpegls)"


def open_dicom(path: Path, pixels: bool = True):
    """``path``'s data set (its header only unless ``pixels``); a file without preamble and file meta (older
    files) is read as a bare data set. ImportError names the package when pydicom is missing."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:
        raise ImportError(f"{path}: DICOM files are read with pydicom; pip install pydicom (or openmae[medical])") from None
    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except InvalidDicomError:
        return pydicom.dcmread(path, stop_before_pixels=not pixels, force=True)


def no_image(ds) -> ValueError:
    """The error for a data set without an image (a report, a structure set, or not DICOM at all)."""
    return ValueError(f"no DICOM image in it (SOP class {ds.get('SOPClassUID', 'none')}: a report, a structure set "
                      "or not a DICOM file)")


def _decoded(path: Path, ds, frame: int | None) -> np.ndarray:
    """The stored values of ``ds`` (the whole image), or of ``frame`` alone read from ``path`` (pydicom reads and
    decodes only that frame's data); a decoder that is not installed is an ImportError saying what to install."""
    from pydicom.pixels import get_decoder, pixel_array

    try:
        return ds.pixel_array if frame is None else pixel_array(path, index=frame)
    except (RuntimeError, NotImplementedError) as err:
        syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        missing = get_decoder(syntax).missing_dependencies if syntax is not None and syntax.is_compressed else []
        first, *failures = str(err).splitlines()  # pydicom's: a line, then one for each plugin that failed
        unsupported = "missing dependencies" in first or all("support" in line for line in failures)
        if not (missing and unsupported):
            raise ValueError(str(err)) from None  # an installed decoder failed on this file's data
        raise ImportError(f"{path}: no installed decoder reads its compression ({syntax.name}; pydicom's decoders "
                          f"for it that are not installed: {'; '.join(missing)}); {PLUGINS}") from None


def _rescale(ds, frame: int | None):
    """The data set holding the rescale for ``frame``: ``ds`` itself, else the frame's or the shared functional
    group's Pixel Value Transformation (an enhanced CT or MR keeps it there, where pydicom's modality LUT does not
    look)."""
    if "RescaleSlope" in ds or "ModalityLUTSequence" in ds:
        return ds
    groups = []
    if frame is not None and len(ds.get("PerFrameFunctionalGroupsSequence", [])) > frame:
        groups.append(ds.PerFrameFunctionalGroupsSequence[frame])
    groups += list(ds.get("SharedFunctionalGroupsSequence", []))[:1]
    for group in groups:
        for item in group.get("PixelValueTransformationSequence", []):
            if "RescaleSlope" in item and "RescaleIntercept" in item:
                return item
    return ds


def dicom_values(path: Path, frame: int | None = None, ds=None) -> np.ndarray:
    """The image of a DICOM file (``frame`` of a multi-frame one), (H, W) or (H, W, 3), in its modality's units:
    the rescale (or modality LUT) of the file or of the frame's functional groups, an RT dose in Gy, MONOCHROME1
    turned over its stored range. Raises ValueError on a file without image or with damaged pixel data,
    ImportError when pydicom or the decoder its compression needs is missing."""
    from pydicom.pixels import apply_modality_lut

    ds = open_dicom(path, pixels=frame is None) if ds is None else ds
    if "PixelData" not in ds and frame is None:
        raise no_image(ds)
    values = apply_modality_lut(_decoded(path, ds, frame), _rescale(ds, frame))
    if "DoseGridScaling" in ds:  # an RT dose grid's stored values times this are Gy
        values = values * float(ds.DoseGridScaling)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":  # brighter is lower: turned over its value range
        bits = int(ds.BitsStored)
        low, high = ((-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if ds.PixelRepresentation else (0, (1 << bits) - 1))
        low, high = apply_modality_lut(np.array([low, high], dtype=np.int64), _rescale(ds, frame)).astype(np.float64)
        values = (low + high) - values.astype(np.float64)
    return values


def read_dicom(path: Path) -> np.ndarray:
    """The image of a single-frame DICOM file, (H, W) or (H, W, 3), in its modality's units (:func:`dicom_values`).
    Raises ValueError on a file that is not a single-frame DICOM image, ImportError when pydicom or the decoder its
    compression needs is missing."""
    ds = open_dicom(path)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ValueError(f"a DICOM file of {frames} frames; data.format=array reads one image a file: read its frames "
                         "as slices with data.format=volume")
    return dicom_values(path, None, ds)
