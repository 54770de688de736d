"""DICOM files (X-ray, CT and MR images) as arrays for ``data.format=array``: one image a file, read with pydicom
and returned in the scanner's units, so that every file of a folder is on one scale.

- The modality LUT is applied (``RescaleSlope`` / ``RescaleIntercept``: a CT's stored values become Hounsfield
  units), as pydicom's ``apply_modality_lut`` does.
- MONOCHROME1 images (a radiograph where a higher value is darker) are inverted over their value range, so that a
  folder that mixes them with MONOCHROME2 images reads brighter-is-higher throughout.
- Colour images come as RGB (pydicom converts YBR), laid out (H, W, 3).
- A file of several frames (a CT or MR series in one file, a cine loop) is refused: which frame, or which frames
  as bands, is the user's choice, made by writing them out.
- Compressed transfer syntaxes are decoded by pydicom's plugins: RLE natively, JPEG 2000 through Pillow, JPEG
  lossless / extended through pylibjpeg (``openmae[medical]``); a missing decoder stops the run saying which.

The window / level (VOI LUT) is a display setting and is not applied: the bands are normalised by ``data.mean`` /
``data.std`` like any array's."""

from __future__ import annotations

from pathlib import Path

import numpy as np

DICOM_SUFFIXES = (".dcm", ".dicom")
PLUGINS = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (or openmae[medical]; JPEG-LS: pyjpegls)"


def read_dicom(path: Path) -> np.ndarray:
    """The image of a DICOM file, (H, W) or (H, W, 3), in its modality's units. Raises ValueError on a file that is
    not a single-frame DICOM image, ImportError when pydicom or the decoder its compression needs is missing."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
        from pydicom.pixels import apply_modality_lut, get_decoder
    except ImportError:
        raise ImportError(f"{path}: DICOM files are read with pydicom; pip install pydicom (or openmae[medical])") from None
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:  # no preamble and file meta (older files): read as a bare data set
        ds = pydicom.dcmread(path, force=True)
    if "PixelData" not in ds:
        raise ValueError(f"no DICOM image in it (SOP class {ds.get('SOPClassUID', 'none')}: a report, a structure set "
                         "or not a DICOM file)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ValueError(f"a DICOM file of {frames} frames; openmae reads one image a file: write each frame (slice) "
                         "to its own file")
    try:
        stored = ds.pixel_array
    except (RuntimeError, NotImplementedError) as err:
        syntax = ds.file_meta.get("TransferSyntaxUID")
        missing = get_decoder(syntax).missing_dependencies if syntax is not None and syntax.is_compressed else []
        first, *failures = str(err).splitlines()  # pydicom's: a line, then one for each plugin that failed
        unsupported = "missing dependencies" in first or all("support" in line for line in failures)
        if not (missing and unsupported):
            raise ValueError(str(err)) from None  # an installed decoder failed on this file's data
        raise ImportError(f"{path}: no installed decoder reads its compression ({syntax.name}; pydicom's decoders "
                          f"for it that are not installed: {'; '.join(missing)}); {PLUGINS}") from None
    values = apply_modality_lut(stored, ds)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":  # brighter is lower: turned over its value range
        bits = int(ds.BitsStored)
        low, high = ((-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if ds.PixelRepresentation else (0, (1 << bits) - 1))
        low, high = apply_modality_lut(np.array([low, high], dtype=np.int64), ds).astype(np.float64)
        values = (low + high) - values.astype(np.float64)
    return values
