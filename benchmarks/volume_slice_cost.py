"""A loader worker's cost for one slice of a 3-D scan (``data.format=volume``), by how the volume is stored: NIfTI
(``.nii``, ``.nii.gz``), multi-frame DICOM (uncompressed, RLE), a ``.npy`` stack and a TIFF of a page a slice.
Each file holds the same CT-like phantom (int16 Hounsfield units: air, a body of soft tissue, bone, noise); the
timed work is reading item ``i`` (``FileVolumes.load``: its ``in_chans`` neighbouring slices, in the file's units)
for random items, one thread, the files already in the page cache; the ``.nii.gz`` also with ``data.volume_cache``
(its first read, which decompresses the file into the cache, timed apart). Also times reading every file's header
(what building the dataset costs a file).

    python benchmarks/volume_slice_cost.py --out runs/volumes --size 512 --slices 160 --rounds 3
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from openmae.data.volumes import FileVolumes


def phantom(size: int, slices: int, seed: int = 0) -> np.ndarray:
    """(X, Y, Z) int16 Hounsfield units: air (-1000) around an elliptic body (40) holding a bony ring (700), plus
    noise (sd 20): compresses about as a CT does."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    volume = np.empty((size, size, slices), np.int16)
    for z in range(slices):
        r = 0.75 + 0.1 * np.sin(z / slices * np.pi)
        body = (x / r) ** 2 + (y / (0.8 * r)) ** 2
        plane = np.where(body < 1, 40.0, -1000.0) + np.where((body > 0.55) & (body < 0.65), 660.0, 0.0)
        volume[:, :, z] = np.clip(plane + rng.normal(0, 20, plane.shape), -1024, 3071)
    return volume


def write_all(volume: np.ndarray, out: Path) -> list[Path]:
    import nibabel as nib
    import tifffile
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless, generate_uid

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "ct.nii", out / "ct.nii.gz", out / "ct.dcm", out / "ct_rle.dcm", out / "ct.npy", out / "ct.tif"]
    img = nib.Nifti1Image(volume, np.diag([0.7, 0.7, 1.5, 1.0]))
    nib.save(img, paths[0])
    nib.save(img, paths[1])
    frames = np.ascontiguousarray(volume.transpose(2, 1, 0)[:, ::-1, ::-1])  # (slices, rows, cols), as displayed
    for path, syntax in ((paths[2], None), (paths[3], RLELossless)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.set_pixel_data((frames + 1024).astype(np.uint16), "MONOCHROME2", 12)
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        if syntax is not None:
            ds.compress(syntax)
        ds.save_as(path, enforce_file_format=True)
    np.save(paths[4], frames)
    tifffile.imwrite(paths[5], frames)  # a page a slice
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/volumes")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--slices", type=int, default=160)
    parser.add_argument("--count", type=int, default=32, help="items timed a round and file (after 4 untimed)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a loader worker
    paths = write_all(phantom(args.size, args.slices), Path(args.out))
    for path in paths:
        print(f"{path.name}: {path.stat().st_size / 2**20:.1f} MiB")
    logging.getLogger("openmae.data.volumes").setLevel(logging.ERROR)  # the .nii.gz advice, once a source
    for rnd in range(args.rounds):
        rng = random.Random(rnd)
        for path, cache in [(p, "") for p in paths] + [(paths[1], str(Path(args.out) / "cache"))]:
            row = []
            start = time.perf_counter()
            FileVolumes([path], None, 1, [], cache=cache)
            row.append(f"header {(time.perf_counter() - start) * 1e3:.1f} ms")
            if cache:
                shutil.rmtree(cache, ignore_errors=True)
                start = time.perf_counter()
                FileVolumes([path], None, 1, [], cache=cache).load(0)
                row.append(f"first read (decompressed into the cache) {(time.perf_counter() - start) * 1e3:.0f} ms")
            planes = ("axial", "coronal", "sagittal") if path.name.startswith("ct.nii") else ("axial",)
            for plane in planes:
                for channels in (1, 3):
                    source = FileVolumes([path], None, channels, [], plane, cache=cache)
                    items = [rng.randrange(len(source)) for _ in range(args.count + 4)]
                    for i in items[:4]:
                        source.load(i)
                    start = time.perf_counter()
                    for i in items[4:]:
                        source.load(i)
                    row.append(f"{plane} x{channels} {(time.perf_counter() - start) / args.count * 1e3:.1f} ms")
            print(f"round {rnd + 1}, {path.name}{', data.volume_cache' if cache else ''}: " + ", ".join(row), flush=True)


if __name__ == "__main__":
    main()
