"""3-D scans as slices (data.format=volume): NIfTI files cut across a plane in one orientation whatever their
storage, square pixels, scaled voxels and neighbouring slices as bands; multi-frame DICOM frames in their units;
.npy / TIFF stacks; a folder of mixed volumes as every slice, bad files skipped; pretraining, kNN and visualize on
volumes made from Fashion-MNIST."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib  # in the dev extra (openmae[medical] for users)
import numpy as np
import pydicom
import pytest
import tifffile
import torch
from helpers import call_cli, run_cli, torchrun
from nibabel.orientations import axcodes2ornt, ornt_transform
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, MRImageStorage
from test_dicom import fashion_mnist, new_dataset, pretrain_trousers_and_bags

from openmae.data.arrays import read_array
from openmae.data.config import DataConfig
from openmae.data.datasets import build_source
from openmae.data.images import BadImageError
from openmae.data.scans import neighbours, read_slices, scan_volume

SHAPE = (6, 7, 5)  # (R, A, S) voxels of the canonical test volume


def canonical() -> np.ndarray:
    """A volume stored RAS+ (index up = right, anterior, superior), every voxel's value distinct, with the corner
    voxel at the most right, anterior and superior position the largest."""
    return np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)


def save_nifti(path: Path, volume: np.ndarray, codes: str = "RAS", zooms=(1.0, 1.0, 1.0), slope_inter=None) -> None:
    """``volume`` (indexed RAS+) written stored as ``codes`` say (e.g. "LPS": index up = left, posterior, superior;
    "SRA": the axes permuted), the affine keeping each voxel where it was."""
    img = nib.Nifti1Image(volume, np.diag([*zooms, 1.0]))
    img = img.as_reoriented(ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(codes))))
    if slope_inter is not None:
        img.header.set_slope_inter(*slope_inter)
    nib.save(img, path)


def expected(volume: np.ndarray, plane: str) -> list[np.ndarray]:
    """The slices of a RAS+ volume in the radiological convention: rows from superior (anterior in an axial cut)
    down, columns from the patient's right to their left (anterior to posterior in a sagittal cut), slices in
    order of R, A or S."""
    cut = {"sagittal": 0, "coronal": 1, "axial": 2}[plane]
    return [np.take(volume, k, axis=cut)[::-1, ::-1].T for k in range(volume.shape[cut])]


def slices(path: Path, plane: str, channels: int = 1) -> list[np.ndarray]:
    scan = scan_volume(path, plane)
    return [read_slices(scan, k, channels).numpy() for k in range(scan.slices)]


def test_nifti_slices_read_in_one_orientation_whatever_the_storage(tmp_path):
    volume = canonical()
    for plane, (rows, cols) in {"axial": (7, 6), "coronal": (5, 6), "sagittal": (5, 7)}.items():
        save_nifti(tmp_path / "ras.nii", volume)
        got = slices(tmp_path / "ras.nii", plane)
        want = expected(volume, plane)
        assert [g.shape for g in got] == [(1, rows, cols)] * len(want)
        assert all(np.array_equal(g[0], w) for g, w in zip(got, want, strict=True)), plane
        # the corner voxel farthest right, anterior and superior lands top left (radiological view), except in a
        # sagittal cut, where the face is to the left: anterior there, superior at the top
        assert got[-1][0, 0, 0] == volume.max()
    for codes, suffix in (("LPS", ".nii"), ("LPI", ".nii.gz"), ("SRA", ".nii"), ("PIL", ".nii.gz")):
        path = tmp_path / f"stored-{codes}{suffix}"
        save_nifti(path, volume, codes)
        assert nib.aff2axcodes(nib.load(path).affine) == tuple(codes)  # stored as said
        for plane in ("axial", "coronal", "sagittal"):
            got, want = slices(path, plane), expected(volume, plane)
            cut = {"sagittal": 0, "coronal": 1, "axial": 2}[plane]
            if "RAS"[cut] not in codes:  # the file's slices run the other way along that axis
                want = want[::-1]
            assert all(np.array_equal(g[0], w) for g, w in zip(got, want, strict=True)), (codes, plane)


def test_square_pixels_scaled_voxels_and_neighbouring_slices(tmp_path):
    volume = canonical()
    save_nifti(tmp_path / "thick.nii.gz", volume, "LPS", zooms=(0.5, 0.5, 2.0), slope_inter=(2.0, -100.0))
    axial = slices(tmp_path / "thick.nii.gz", "axial")  # in-plane 0.5 x 0.5 mm: as stored
    assert np.array_equal(axial[2][0], expected(volume, "axial")[2] * 2.0 - 100)  # scl_slope, scl_inter
    coronal = slices(tmp_path / "thick.nii.gz", "coronal")  # rows 2 mm apart, columns 0.5 mm: rows x4
    assert coronal[0].shape == (1, 20, 6)
    plain = torch.from_numpy(expected(volume, "coronal")[-1] * 2.0 - 100).float()  # LPS: slice 0 is the front one
    resized = torch.nn.functional.interpolate(plain[None, None], size=(20, 6), mode="bilinear", align_corners=False)
    assert torch.allclose(torch.from_numpy(coronal[0]), resized[0], atol=1e-4)
    assert neighbours(0, 5, 3) == [0, 0, 1] and neighbours(4, 5, 3) == [3, 4, 4] and neighbours(2, 5, 4) == [1, 2, 3, 4]
    one = slices(tmp_path / "thick.nii.gz", "axial")
    three = slices(tmp_path / "thick.nii.gz", "axial", channels=3)
    for k in range(5):
        assert np.array_equal(three[k], np.concatenate([one[j] for j in neighbours(k, 5, 3)])), k


def write_frames(path: Path, frames: np.ndarray, photometric: str = "MONOCHROME2", rescales=None) -> None:
    """(F, H, W) unsigned 12-bit frames as one multi-frame MR file; ``rescales``: a (slope, intercept) per frame,
    kept in the per-frame functional groups as an enhanced MR keeps them."""
    ds = new_dataset(MRImageStorage)
    ds.set_pixel_data(frames.astype(np.uint16), photometric, 12)
    if rescales is not None:
        groups = []
        for slope, intercept in rescales:
            transform = Dataset()
            transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = slope, intercept, "US"
            group = Dataset()
            group.PixelValueTransformationSequence = [transform]
            groups.append(group)
        ds.PerFrameFunctionalGroupsSequence = groups
    ds.save_as(path, enforce_file_format=True)


def test_multiframe_dicom_frames_are_slices_in_their_units(tmp_path):
    dose = pydicom.dcmread(get_testdata_file("rtdose.dcm"))  # 15 frames; stored values x DoseGridScaling = Gy
    for name in ("rtdose.dcm", "rtdose_rle.dcm", "rtdose_expb.dcm"):  # native, RLE, big-endian
        got = slices(Path(get_testdata_file(name)), "axial")
        assert len(got) == 15, name
        for k in (0, 7, 14):
            assert np.allclose(got[k][0], dose.pixel_array[k] * float(dose.DoseGridScaling)), (name, k)
    frames = (np.arange(3 * 6 * 5).reshape(3, 6, 5) * 97) % 4096
    write_frames(tmp_path / "plain.dcm", frames)
    write_frames(tmp_path / "inverted.dcm", 4095 - frames, "MONOCHROME1")
    write_frames(tmp_path / "enhanced.dcm", frames // 2, rescales=[(2.0, 0.0), (2.0, -10.0), (2.0, 5.0)])
    plain = slices(tmp_path / "plain.dcm", "axial")
    assert all(np.array_equal(plain[k][0], frames[k]) for k in range(3))
    assert all(np.array_equal(a, b) for a, b in zip(slices(tmp_path / "inverted.dcm", "axial"), plain, strict=True))
    enhanced = slices(tmp_path / "enhanced.dcm", "axial")  # each frame its own rescale, from its functional group
    assert [float(enhanced[k][0, 0, 0] - frames[k, 0, 0] // 2 * 2) for k in range(3)] == [0.0, -10.0, 5.0]
    three = slices(tmp_path / "plain.dcm", "axial", channels=3)
    assert np.array_equal(three[0], np.stack([frames[0], frames[0], frames[1]]))
    rgb = slices(Path(get_testdata_file("SC_rgb_rle_2frame.dcm")), "axial", channels=3)  # colour frames: own bands
    colour = pydicom.dcmread(get_testdata_file("SC_rgb_rle_2frame.dcm")).pixel_array
    assert len(rgb) == 2 and np.array_equal(rgb[1], np.moveaxis(colour[1], -1, 0))
    with pytest.raises(BadImageError, match="a DICOM file of 3 frames; data.format=array reads one image a file: "
                                            "read its frames as slices with data.format=volume"):
        read_array(tmp_path / "plain.dcm", 1)


def make_volume_folder(root: Path) -> dict[str, int]:
    """One volume of each kind openmae reads, and its slice count."""
    root.mkdir(parents=True)
    counts = {}
    save_nifti(root / "head.nii.gz", canonical(), "LPS")
    counts["head.nii.gz"] = 5
    write_frames(root / "series.dcm", np.zeros((4, 6, 5)) + 100)
    counts["series.dcm"] = 4
    np.save(root / "stack.npy", np.ones((3, 9, 8), np.float32))
    counts["stack.npy"] = 3
    tifffile.imwrite(root / "zstack.tif", np.full((2, 8, 8), 7, np.uint16))  # a page a slice
    counts["zstack.tif"] = 2
    np.save(root / "single.npy", np.full((10, 10), 3.0, np.float32))  # one slice
    counts["single.npy"] = 1
    return counts


def test_a_folder_of_volumes_is_every_slice_and_skips_bad_files(tmp_path, caplog):
    root = tmp_path / "scans"
    counts = make_volume_folder(root)
    (root / "broken.nii.gz").write_bytes((root / "head.nii.gz").read_bytes()[:60])  # cut inside its header
    np.save(root / "timeseries.npy", np.zeros((2, 3, 4, 5)))
    cfg = DataConfig(name="folder", path=str(root), format="volume")
    with caplog.at_level(logging.WARNING):
        source = build_source(cfg, "train", 1)
    assert len(source) == sum(counts.values()) == 15
    assert "2 of 7 volume files could not be read and are left out" in caplog.text
    assert "timeseries.npy: ValueError: an array of shape (2, 3, 4, 5); a stack is (D, H, W)" in caplog.text
    described = [source.describe(i) for i in range(len(source))]
    assert described[0].endswith("head.nii.gz (slice 0 of 5)") and described[5].endswith("series.dcm (slice 0 of 4)")
    assert {source.load(i)[0].shape for i in range(5, 9)} == {(1, 6, 5)} and float(source.load(7)[0].max()) == 100
    assert source.load(9)[0].shape == (1, 10, 10) and source.load(12)[0].shape == (1, 9, 8)  # single, stack
    assert source.load(14)[0].shape == (1, 8, 8) and float(source.load(14)[0].min()) == 7  # the TIFF's pages
    with pytest.raises(BadImageError, match="broken.nii.gz"):
        build_source(DataConfig(name="folder", path=str(root), format="volume", bad_files="fail"), "train", 1)
    with pytest.raises(ValueError, match="SC_rgb_rle_2frame.dcm holds colour frames \\(3 bands a slice\\), but the "
                                         "model takes model.in_chans=1; set model.in_chans=3"):
        from openmae.data.volumes import FileVolumes

        FileVolumes([Path(get_testdata_file("SC_rgb_rle_2frame.dcm"))], None, 1, [])
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 2, 2), np.float32), np.eye(4)), tmp_path / "field.nii")
    with pytest.raises(BadImageError, match="a NIfTI image of shape \\(4, 4, 3, 2, 2\\); openmae reads \\(X, Y, Z\\)"):
        scan_volume(tmp_path / "field.nii")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 1), np.float32), np.eye(4)), tmp_path / "one.nii")
    assert scan_volume(tmp_path / "one.nii").slices == 3  # a trailing axis of one is no time series
    nan = np.zeros((3, 4, 4), np.float32)
    nan[1, 2, 2] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    with pytest.raises(BadImageError, match="nan.npy \\(slice 2 of 3\\): holds NaN"):
        read_slices(scan_volume(tmp_path / "nan.npy"), 2, 3)  # a neighbour holds it
    assert read_slices(scan_volume(tmp_path / "nan.npy"), 0, 1).sum() == 0  # slices apart from it are fine
    with pytest.raises(ValueError, match="data.slice_plane='top' is invalid: must be one of"):
        DataConfig(name="folder", path=str(root), format="volume", slice_plane="top").check()


def test_pretrain_knn_visualize_and_finetune_on_volumes(tmp_path, datasets):
    """Fashion-MNIST trousers and bags stacked into volumes (ten images of one class each) stored as NIfTI (plain
    and gzipped, LPS) and as multi-frame DICOM, in an ImageFolder, one broken volume among them: pretraining on
    their slices measures the statistics, trains, and its encoder tells the slices' classes apart by kNN;
    visualize shows a volume's middle slice; fine-tuning learns the slices' labels."""
    root = tmp_path / "volumes"
    for split, count in (("train", 150), ("test", 50)):
        images, labels = fashion_mnist(datasets, split)
        if split == "train":
            trousers = images[labels == 1].astype(np.int64)
            images_of = {k: images[labels == k][:count] for k in (1, 8)}
        for label, name in ((1, "trouser"), (8, "bag")):
            (root / split / name).mkdir(parents=True)
            picked = images[labels == label][:count].astype(np.int64) * 16  # 0..4080
            for v in range(count // 10):
                stack = picked[10 * v : 10 * v + 10]  # (10, 28, 28): slices, rows, columns
                if v % 3 == 2:
                    write_frames(root / split / name / f"{v:03d}.dcm", stack)
                else:  # written so that its axial slices read as the images do
                    ras = np.ascontiguousarray(stack[:, ::-1, ::-1].transpose(2, 1, 0)).astype(np.int16)
                    save_nifti(root / split / name / f"{v:03d}.nii{'.gz' if v % 3 else ''}", ras, "LPS" if v % 3 else "RAS")
    (root / "train" / "bag" / "broken.nii").write_bytes(b"\0" * 100)
    first = read_slices(scan_volume(root / "train" / "trouser" / "000.nii"), 3, 1)[0].numpy()
    assert np.array_equal(first, trousers[3] * 16)
    assert np.array_equal(read_slices(scan_volume(root / "train" / "trouser" / "001.nii.gz"), 2, 1)[0], trousers[12] * 16)
    every = np.concatenate([images_of[k] for k in (1, 8)]).astype(np.float64) * 16  # the 300 training slices
    proc = pretrain_trousers_and_bags(tmp_path, root, "volume", every)
    assert "1 of 31 volume files could not be read" in proc.stderr and "broken.nii" in proc.stderr
    assert "measured on 256 training slices of" in proc.stderr
    shown = call_cli("visualize", "--checkpoint", str(tmp_path / "pre" / "model-last.pth"),
                     str(root / "test" / "bag" / "001.nii.gz"), str(root / "test" / "bag" / "002.dcm"), "-o",
                     str(tmp_path / "shown"), "data.format=volume")
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "shown").iterdir()) == ["001.png", "002.png"]
    data = [f"data.path={root}", "data.name=imagefolder", "data.format=volume", "data.num_workers=2"]
    tune = call_cli("finetune", "--checkpoint", str(tmp_path / "pre" / "model-last.pth"), "-o", str(tmp_path / "ft"),
                    *data, "model.name=auto", "train.epochs=2", "train.warmup_epochs=0", "train.batch_size=32",
                    "train.progress=false", "finetune.auto_augment=")
    assert tune.returncode == 0, tune.stderr[-3000:]
    results = [json.loads(line) for line in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    assert [r["top1"] for r in results if "top1" in r][-1] > 60.0  # 81 measured after 2 epochs; chance is 50


def test_volume_cache_decompresses_each_gzipped_file_once(tmp_path, caplog):
    """A .nii.gz read through data.volume_cache (decompressed once into a .npy, memory-mapped), an uncompressed
    .nii (memory-mapped) and nibabel's own reading of the .nii.gz give the same slices in every plane; the cache
    file is written once and replaced when the volume changes; a cache that cannot be written stops the run."""
    from openmae.data.volume_cache import VolumeCacheError
    from openmae.data.volumes import FileVolumes

    volume = canonical()
    save_nifti(tmp_path / "v.nii.gz", volume, "PIL", zooms=(1.0, 1.0, 2.0), slope_inter=(2.0, -100.0))
    save_nifti(tmp_path / "v.nii", volume, "PIL", zooms=(1.0, 1.0, 2.0), slope_inter=(2.0, -100.0))
    cache = tmp_path / "cache"
    for plane in ("axial", "coronal", "sagittal"):
        proxy = slices(tmp_path / "v.nii.gz", plane, channels=3)
        mapped = slices(tmp_path / "v.nii", plane, channels=3)
        scan = scan_volume(tmp_path / "v.nii.gz", plane, str(cache))
        cached = [read_slices(scan, k, 3).numpy() for k in range(scan.slices)]
        assert all(np.array_equal(a, b) and np.array_equal(a, c) for a, b, c in zip(proxy, mapped, cached, strict=True))
    axial = expected(volume, "axial")  # PIL: S runs down the file, so slice 0 is the top one
    assert np.array_equal(read_slices(scan_volume(tmp_path / "v.nii.gz", "axial", str(cache)), 0, 1)[0],
                          axial[-1] * 2.0 - 100)
    (written,) = cache.iterdir()
    assert written.suffix == ".npy" and np.load(written).dtype == np.int16  # stored values: scaled on reading
    stamp = written.stat().st_mtime_ns
    read_slices(scan_volume(tmp_path / "v.nii.gz", "coronal", str(cache)), 2, 1)
    assert written.stat().st_mtime_ns == stamp and len(list(cache.iterdir())) == 1  # read, not written again
    save_nifti(tmp_path / "v.nii.gz", volume + 1, "PIL", zooms=(1.0, 1.0, 2.0), slope_inter=(2.0, -100.0))
    again = read_slices(scan_volume(tmp_path / "v.nii.gz", "axial", str(cache)), 0, 1)[0]
    assert np.array_equal(again, (axial[-1] + 1) * 2.0 - 100) and len(list(cache.iterdir())) == 2
    with caplog.at_level(logging.WARNING):
        FileVolumes([tmp_path / "v.nii.gz"], None, 1, [], cache=str(cache))
        assert "decompresses" not in caplog.text
        FileVolumes([tmp_path / "v.nii.gz"], None, 1, [])
    assert "1 .nii.gz volumes: each slice read decompresses its file up to the slice" in caplog.text
    assert "set data.volume_cache=<folder>" in caplog.text
    (tmp_path / "a_file").write_text("")
    with pytest.raises(VolumeCacheError, match="could not write .*v.nii.gz's voxels to data.volume_cache=.*a_file/"
                                               "cache: .*; free space there, name another folder"):
        read_slices(scan_volume(tmp_path / "v.nii.gz", "axial", str(tmp_path / "a_file" / "cache")), 0, 1)


def test_processes_wanting_the_same_volume_at_once_decompress_it_once(tmp_path, monkeypatch):
    """Loader workers (or the ranks of a node) meeting a .nii.gz not yet in data.volume_cache at the same moment:
    one decompresses it while the others wait, then all read the same file; no lock or partial file is left."""
    import multiprocessing
    import os
    import time

    from openmae.data import scans as scans_module

    volume = canonical()
    save_nifti(tmp_path / "v.nii.gz", volume, "PIL", slope_inter=(2.0, -100.0))
    cache = tmp_path / "cache"
    scan = scan_volume(tmp_path / "v.nii.gz", "axial", str(cache))
    want = read_slices(scan_volume(tmp_path / "v.nii.gz", "axial"), 5, 1).numpy()  # nibabel's own reading
    log = tmp_path / "decompressions.log"

    class Slow:  # nibabel, whose whole-file loads are logged and take 0.5 s
        @staticmethod
        def load(path):
            with open(log, "a") as fh:
                fh.write(f"{os.getpid()}\n")
            time.sleep(0.5)
            return nib.load(path)

    monkeypatch.setattr(scans_module, "_nibabel", lambda: Slow)
    context = multiprocessing.get_context("fork")
    together = context.Barrier(3)

    def worker(k: int) -> None:
        together.wait()
        np.save(tmp_path / f"slice{k}.npy", read_slices(scan, 5, 1).numpy())

    processes = [context.Process(target=worker, args=(k,)) for k in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [process.exitcode for process in processes] == [0, 0, 0]
    assert len(log.read_text().split()) == 1  # without the lock: 3
    assert all(np.array_equal(np.load(tmp_path / f"slice{k}.npy"), want) for k in range(3))
    assert [f.suffix for f in cache.iterdir()] == [".npy"]


def test_a_4d_nifti_is_a_series_of_volumes_or_their_bands(tmp_path):
    """A 4-D NIfTI (X, Y, Z, T) stored LPS, plain and gzipped through the cache: with data.fourth_axis=volumes its
    T volumes one after another, each slice that volume's in the radiological orientation, held out together;
    with bands, each slice's T bands are the volumes' slices (model.in_chans must be T: said otherwise)."""
    from openmae.data.build import holdout_split
    from openmae.data.volumes import FileVolumes

    volumes = [canonical() + 1000 * t for t in range(3)]
    for name in ("series.nii", "series.nii.gz"):
        save_nifti(tmp_path / name, np.stack(volumes, axis=-1), "LPS")
    for name, cache in (("series.nii", ""), ("series.nii.gz", ""), ("series.nii.gz", str(tmp_path / "cache"))):
        each = FileVolumes([tmp_path / name], [4], 1, ["x"], cache=cache)
        assert len(each) == 3 * 5 and each.volume_items() == [range(15)] and each.locate(7)[2] == 4
        for t in range(3):
            for k, want in enumerate(expected(volumes[t], "axial")):
                assert np.array_equal(each.load(5 * t + k)[0].numpy(), want[None]), (name, t, k)
        assert each.describe(7).endswith(f"{name} (volume 1 of 3, slice 2 of 5)")
        bands = FileVolumes([tmp_path / name], None, 3, [], cache=cache, fourth_axis="bands")
        assert len(bands) == 5 and bands.describe(2).endswith(f"{name} (slice 2 of 5)")
        for k in range(5):
            assert np.array_equal(bands.load(k)[0].numpy(), np.stack([expected(v, "axial")[k] for v in volumes]))
    with pytest.raises(ValueError, match="series.nii holds a 4-D NIfTI of 3 volumes read as bands "
                                         "\\(data.fourth_axis=bands: 3 bands a slice\\), but the model takes "
                                         "model.in_chans=1; set model.in_chans=3"):
        FileVolumes([tmp_path / "series.nii"], None, 1, [], fourth_axis="bands")
    np.save(tmp_path / "plain.npy", np.zeros((4, 6, 5), np.float32))
    both = FileVolumes([tmp_path / "series.nii", tmp_path / "plain.npy", tmp_path / "series.nii.gz"], None, 1, [])
    assert both.volume_items() == [range(15), range(15, 19), range(19, 34)]
    kept, held = holdout_split(both, 0.34, 0)
    assert sorted(kept + held) == list(range(34)) and held in ([*range(15)], [*range(15, 19)], [*range(19, 34)])
    with pytest.raises(ValueError, match="data.fourth_axis='time' is invalid: must be one of \\['volumes', 'bands'\\]"):
        DataConfig(name="folder", path=str(tmp_path), format="volume", fourth_axis="time").check()


def test_crops_of_slices_on_the_device_path_equal_the_cpu_path(tmp_path):
    """Pretraining crops of volume slices: the CPU path's crop of a slice (MappedCrop over FileVolumes.view) equals
    the plain transform on the loaded slice, and the device path (data.device_augment) gives the CPU path's
    tensors, through a repeated source (data.repeat)."""
    from openmae.data.build import train_dataset
    from openmae.data.loader import SeededSamples, collate

    root = tmp_path / "scans"
    root.mkdir()
    rng = np.random.default_rng(0)
    save_nifti(root / "a.nii.gz", rng.integers(-1000, 2000, (40, 36, 6)).astype(np.int16), "LPS", zooms=(1, 1, 1.5))
    write_frames(root / "b.dcm", rng.integers(0, 4096, (5, 30, 34)))
    np.save(root / "c.npy", rng.normal(size=(4, 32, 32)).astype(np.float32))
    out = []
    for device_augment in (False, True):
        cfg = DataConfig(name="folder", path=str(root), format="volume", device_augment=device_augment, repeat=2,
                         num_workers=0, mean=(500.0,) * 3, std=(900.0,) * 3, crop_scale=(0.3, 1.0),
                         volume_cache=str(tmp_path / "cache"))
        dataset, sampler = train_dataset(cfg, (24, 24), 3, batch_size=16, seed=5)
        assert len(dataset.source) == 2 * (6 + 5 + 4)
        items = list(sampler)[:16]
        if not device_augment:
            whole = SeededSamples(dataset.source, dataset.transform.plain)  # the plain transform on each loaded slice
            assert all(torch.equal(dataset[item][0], whole[item][0]) for item in items)
        batch = collate([dataset[item] for item in items])
        out.append(dataset.to_device(batch, torch.device("cpu")).images if device_augment else batch.images)
    assert out[0].shape == out[1].shape == (16, 3, 24, 24) and torch.equal(out[0], out[1])


def write_series(folder: Path, frames: np.ndarray, uid: str, names: list[str], positions=None, orientation=None,
                 numbers=None) -> None:
    """(N, H, W) unsigned 12-bit CT slices as N single-frame files of one series (Hounsfield units: intercept -1024),
    slice ``k`` named ``names[k]``, at ``positions[k]`` (Image Position Patient) with ``orientation`` and Instance
    Number ``numbers[k]`` when given."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, frame in enumerate(frames):
        ds = new_dataset(CTImageStorage)
        ds.set_pixel_data(frame.astype(np.uint16), "MONOCHROME2", 12)
        ds.SeriesInstanceUID, ds.RescaleSlope, ds.RescaleIntercept = uid, 1, -1024
        if positions is not None:
            ds.ImagePositionPatient, ds.ImageOrientationPatient = list(positions[k]), list(orientation)
        if numbers is not None:
            ds.InstanceNumber = numbers[k]
        ds.save_as(folder / names[k], enforce_file_format=True)


def test_a_dicom_series_stored_a_file_a_slice_is_one_volume_in_body_order(tmp_path):
    """Single-frame files of one folder and series make one volume, slices ordered along their normal (axial: z;
    coronal: y) whatever the files are called and numbered, else by Instance Number; another series, the same series
    in another folder and a lone radiograph stay apart; neighbours as bands come from the body's order; visualize
    names a series by its folder and first file."""
    import openmae
    from openmae.data.volumes import FileVolumes
    from openmae.eval.visualize import visualize_files

    rng = np.random.default_rng(1)
    axial = rng.integers(0, 4096, (6, 8, 9))  # in body order, foot to head (z up)
    order = rng.permutation(6)  # file k holds slice order[k]: names and numbers say nothing of the order
    write_series(tmp_path / "ct", axial[order], "1.2.3.1", [f"IM{k:04d}.dcm" for k in range(6)],
                 positions=[(-100.0, -80.0, 2.5 * i - 40) for i in order], orientation=(1, 0, 0, 0, 1, 0),
                 numbers=[k + 1 for k in range(6)])
    coronal = rng.integers(0, 4096, (4, 7, 9))  # in order of y (posterior up, DICOM's patient axes)
    write_series(tmp_path / "ct", coronal[::-1], "1.2.3.2", [f"COR{k}.dcm" for k in range(4)],
                 positions=[(0.0, 10.0 - 3 * k, 0.0) for k in range(4)], orientation=(1, 0, 0, 0, 0, -1),
                 numbers=[1, 2, 3, 4])
    numbered = rng.integers(0, 4096, (3, 5, 5))
    write_series(tmp_path / "ct", numbered[[2, 0, 1]], "1.2.3.3", ["a.dcm", "b.dcm", "c.dcm"], numbers=[3, 1, 2])
    write_series(tmp_path / "ct", rng.integers(0, 4096, (1, 6, 6)), "1.2.3.4", ["xray.dcm"])
    write_series(tmp_path / "other", axial[:2], "1.2.3.1", ["x.dcm", "y.dcm"])
    files = sorted((tmp_path / "ct").iterdir()) + sorted((tmp_path / "other").iterdir())
    source = FileVolumes(files, None, 1, [])
    assert [(s.kind, s.slices) for s in source.scans] == [("series", 4), ("series", 6), ("series", 3),
                                                          ("dicom", 1), ("series", 2)]
    volumes = dict(zip(("coronal", "axial", "numbered"), source.scans, strict=False))
    for name, want in (("axial", axial), ("coronal", coronal), ("numbered", numbered)):
        got = [read_slices(volumes[name], k, 1)[0].numpy() for k in range(len(want))]
        assert all(np.array_equal(g, w - 1024.0) for g, w in zip(got, want, strict=True)), name
    three = read_slices(volumes["axial"], 0, 3).numpy()
    assert np.array_equal(three, np.stack([axial[0], axial[0], axial[1]]) - 1024.0)
    first = int(np.flatnonzero(order == 0)[0])  # the file holding the lowest slice
    assert source.describe(4) == f"{tmp_path / 'ct' / f'IM{first:04d}.dcm'} (slice 0 of 6)"
    model = openmae.create_model("mae_vit_debug_patch4_32", in_chans=1)
    data = DataConfig(name="folder", format="volume", mean=(0.0,), std=(1000.0,))
    shown = visualize_files(model, files, tmp_path / "shown", data, scale=1)
    assert [p.name for p in shown] == ["ct-COR3.png", f"ct-IM{first:04d}.png", "ct-b.png", "xray.png", "other-x.png"]


def test_clip_bounds_values_on_every_path(tmp_path):
    """data.clip (a CT window) bounds the values before anything else: a volume's slices, an array file read whole,
    its memory-mapped and tiled views' windows, the statistics, and the CPU and device paths' crops alike."""
    from openmae.data.arrays import band_stats
    from openmae.data.build import train_dataset
    from openmae.data.datasets import FileArrays
    from openmae.data.loader import collate

    rng = np.random.default_rng(2)
    hu = rng.integers(-1024, 3000, (40, 36, 5)).astype(np.int16)
    (tmp_path / "vol").mkdir()
    save_nifti(tmp_path / "vol" / "ct.nii", hu)
    window = (-1000.0, 1000.0)
    raw = slices(tmp_path / "vol" / "ct.nii", "axial")
    source = build_source(DataConfig(name="folder", path=str(tmp_path / "vol"), format="volume", clip=window), "train", 1)
    assert all(np.array_equal(source.load(k)[0].numpy(), np.clip(raw[k], *window)) for k in range(5))
    assert raw[0].min() < -1000 and raw[0].max() > 1000  # there was something to clip
    (tmp_path / "arr").mkdir()
    scene = rng.integers(0, 60000, (3, 600, 640)).astype(np.uint16)
    np.save(tmp_path / "arr" / "a.npy", scene)
    tifffile.imwrite(tmp_path / "arr" / "b.tif", scene.transpose(1, 2, 0), tile=(128, 128), compression="zlib",
                     photometric="rgb")
    bounds = (10000.0, 50000.0)
    arrays = FileArrays(sorted((tmp_path / "arr").iterdir()), None, 3, [], clip=bounds)
    want = np.clip(scene.astype(np.float32), *bounds)
    for i in range(2):
        assert np.array_equal(arrays.load(i)[0].numpy(), want)
        view, _ = arrays.view(i)  # memory-mapped .npy, tiled TIFF
        assert view.shape == (3, 600, 640) and np.array_equal(view[:, 130:300, 7:500], want[:, 130:300, 7:500])
    mean, std = band_stats(arrays, pixels=2 * 4 * 256**2)  # windows of each scene, clipped
    assert max(mean) <= 50000 and min(mean) >= 10000
    whole_mean, _ = band_stats(arrays)  # every pixel, clipped
    assert np.allclose(whole_mean, want.reshape(3, -1).astype(np.float64).mean(1), rtol=1e-6)
    out = []
    for device_augment in (False, True):
        cfg = DataConfig(name="folder", path=str(tmp_path / "arr"), format="array", clip=bounds, repeat=8,
                         device_augment=device_augment, num_workers=0, mean=(30000.0,) * 3, std=(15000.0,) * 3)
        dataset, sampler = train_dataset(cfg, (24, 24), 3, batch_size=16, seed=7)
        batch = collate([dataset[item] for item in list(sampler)[:16]])
        out.append(dataset.to_device(batch, torch.device("cpu")).images if device_augment else batch.images)
    assert torch.equal(out[0], out[1]) and out[0].max() <= (50000 - 30000) / 15000 + 1e-3  # bicubic may overshoot a bit


def test_holdout_keeps_each_volume_whole_on_one_side(tmp_path):
    """data.holdout on volumes holds out whole volumes: no volume has slices on both sides (neighbouring slices are
    near copies), the held-out items are all the slices of the volumes drawn, the same on every call."""
    from openmae.data.build import holdout_indices, source_for

    root = tmp_path / "scans"
    root.mkdir()
    for v in range(8):
        np.save(root / f"{v}.npy", np.full((3 + v % 3, 6, 6), v, np.float32))  # 3, 4 or 5 slices, valued by volume
    cfg = DataConfig(name="folder", path=str(root), format="volume", holdout=0.25, holdout_seed=1)
    kept, held = source_for(cfg, "train", 1), source_for(cfg, "test", 1)
    assert sorted(np.concatenate([kept.index, held.index]).tolist()) == list(range(sum(3 + v % 3 for v in range(8))))
    volume_of = lambda view: {int(view.load(i)[0][0, 0, 0]) for i in range(len(view))}  # noqa: E731
    kept_volumes, held_volumes = volume_of(kept), volume_of(held)
    assert kept_volumes.isdisjoint(held_volumes) and len(held_volumes) == 2
    assert held_volumes == set(holdout_indices(8, 0.25, 1)[1])  # files sorted by name: volume v is volume v
    assert len(held) == sum(3 + v % 3 for v in held_volumes) and np.array_equal(held.index, source_for(cfg, "test", 1).index)
    with pytest.raises(ValueError, match="data.holdout=0.01 of 8 training volumes holds out 0"):
        source_for(DataConfig(name="folder", path=str(root), format="volume", holdout=0.01), "test", 1)


def body_volume(scale: float, offset: float) -> np.ndarray:
    """A (12, 12, 10) RAS+ volume: air (0) around a block of tissue in axial slices 3..6 whose values run 1..n,
    read by a scanner as ``value * scale + offset`` (offset in the tissue only: air stays 0)."""
    volume = np.zeros((12, 12, 10), np.float32)
    tissue = np.arange(1, 8 * 6 * 4 + 1, dtype=np.float32).reshape(8, 6, 4)
    volume[2:10, 3:9, 3:7] = tissue * scale + offset
    return volume


def test_volume_norm_and_foreground_pick_each_volumes_scale_and_its_slices(tmp_path, caplog, monkeypatch):
    """data.volume_norm: two scans of one body at different scanner scales read alike after zscore or percentile
    scaling over their foreground voxels, equal to numpy's statistics of them; data.min_foreground leaves out the
    slices of air; chunked reading gives the same statistics; a 4-D file's contrasts each get their own scale; a NaN
    slice is left out and counted; the survey is kept in data.volume_cache and read back without reading voxels."""
    from openmae.data import survey as survey_module
    from openmae.data.survey import Settings
    from openmae.data.volumes import FileVolumes

    a, b = body_volume(1.0, 0.0), body_volume(4.0, 300.0)
    save_nifti(tmp_path / "a.nii", a, "LPS")
    save_nifti(tmp_path / "b.nii.gz", b, "RAS")
    files = [tmp_path / "a.nii", tmp_path / "b.nii.gz"]
    tissue = a[a > 0]
    for norm in ("zscore", "percentile"):
        settings = Settings(norm, (5.0, 95.0), foreground=0.0, min_foreground=0.1)
        with caplog.at_level(logging.INFO):
            source = FileVolumes(files, None, 1, [], survey=settings)
        assert source.counts == [4, 4] and len(source) == 8  # axial slices 3..6 hold tissue on 8x6 of 12x12 pixels
        assert [source.describe(i).split(" (")[1] for i in (0, 3, 4)] == ["slice 3 of 10)", "slice 6 of 10)",
                                                                          "slice 3 of 10)"]
        assert "volumes surveyed: 20 slices of 2 volumes, 8 kept" in caplog.text
        if norm == "zscore":
            want = (a - tissue.mean()) / tissue.std()
        else:
            low, high = np.percentile(tissue, [5.0, 95.0])
            want = np.clip((a - low) / (high - low), 0, 1)
        for k in range(4):
            first, second = source.load(k)[0][0].numpy(), source.load(4 + k)[0][0].numpy()
            inside = expected(a, "axial")[3 + k] > 0
            np.testing.assert_allclose(first, expected(want, "axial")[3 + k], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(second[inside], first[inside], rtol=1e-4, atol=1e-4)  # the scanner's scale gone
    every = FileVolumes(files, None, 3, [], survey=Settings("zscore"))  # all voxels, all slices, 2.5-D
    assert every.counts == [10, 10] and every.surveys[0].kept is None
    np.testing.assert_allclose(every.surveys[0].shift, [a.mean()], rtol=1e-6)
    monkeypatch.setattr(survey_module, "CHUNK_VOXELS", 300)  # two slices a chunk
    survey_module._SURVEYS.clear()
    survey_module._SURVEYED.clear()
    chunked = FileVolumes(files, None, 3, [], survey=Settings("zscore"))
    np.testing.assert_allclose(chunked.surveys[1].shift, every.surveys[1].shift, rtol=1e-6)
    np.testing.assert_allclose(chunked.surveys[1].scale, every.surveys[1].scale, rtol=1e-6)
    contrasts = np.stack([a, a * 10 + 5], axis=-1)
    save_nifti(tmp_path / "contrasts.nii", contrasts, "RAS")
    bands = FileVolumes([tmp_path / "contrasts.nii"], None, 2, [], fourth_axis="bands",
                        survey=Settings("zscore", foreground=0.0))
    image = bands.load(4)[0].numpy()
    inside = expected(a, "axial")[4] > 0
    np.testing.assert_allclose(image[1][inside], image[0][inside], rtol=1e-4, atol=1e-4)
    stack = np.ones((5, 6, 6), np.float32)
    stack[2, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", stack)
    with caplog.at_level(logging.INFO):
        nan = FileVolumes([tmp_path / "nan.npy"], None, 1, [], survey=Settings("percentile"))
    assert nan.surveys[0].kept == (0, 1, 3, 4) and "1 unreadable" in caplog.text
    cache = tmp_path / "cache"
    survey_module._SURVEYS.clear()
    survey_module._SURVEYED.clear()
    first = FileVolumes(files, None, 1, [], cache=str(cache), survey=Settings("zscore", foreground=0.0))
    assert len(list(cache.glob("survey-*.json"))) == 2
    kept = sorted(cache.glob("survey-*.json"))
    kept[1].write_text('{"kept": null, "shift": [1.0], "scale": [2.0], "from": "another version"}')
    survey_module._SURVEYS.clear()
    survey_module._SURVEYED.clear()
    with caplog.at_level(logging.WARNING):
        mended = FileVolumes(files, None, 1, [], cache=str(cache), survey=Settings("zscore", foreground=0.0))
    assert mended.surveys == first.surveys and "could not be read back (TypeError" in caplog.text
    survey_module._SURVEYS.clear()
    survey_module._SURVEYED.clear()
    monkeypatch.setattr(survey_module, "survey_volume", lambda *args: pytest.fail("read the voxels again"))
    again = FileVolumes(files, None, 1, [], cache=str(cache), survey=Settings("zscore", foreground=0.0))
    assert again.surveys == first.surveys  # the mended file rewritten, both read back
    for bad, match in ((dict(min_foreground=0.1), "data.min_foreground=0.1 is invalid: must be 0 unless data.foreground"),
                       (dict(volume_norm="minmax"), "data.volume_norm='minmax' is invalid: must be one of"),
                       (dict(format="array", volume_norm="zscore"), "data.format='array' is invalid: must be 'volume' "
                                                                    "for data.volume_norm")):
        with pytest.raises(ValueError, match=match):
            DataConfig(**{"name": "folder", "path": str(tmp_path), "format": "volume", **bad}).check()


def test_pretraining_with_volume_norm_records_it_and_evaluation_without_is_told(tmp_path):
    """The CLI with data.volume_norm, data.foreground and data.min_foreground: the survey runs (kept in the volume
    cache), the statistics are measured on the scaled, kept slices, the checkpoint records the setting, and kNN
    from it without the setting is told to set it."""
    from openmae.data.survey import Settings
    from openmae.data.volumes import FileVolumes

    root = tmp_path / "mr"
    for v, (name, scale) in enumerate((("a", 1.0), ("a", 3.0), ("b", 0.5), ("b", 2.0))):
        (root / name).mkdir(parents=True, exist_ok=True)
        save_nifti(root / name / f"{v}.nii.gz", body_volume(scale, 10.0 * v), "LPS")
    files = sorted(root.rglob("*.nii.gz"))
    settings = Settings("zscore", foreground=0.5, min_foreground=0.1)
    source = FileVolumes(files, None, 1, [], survey=settings)
    pixels = torch.cat([source.load(i)[0].flatten() for i in range(len(source))]).double()
    data = [f"data.path={root}", "data.name=imagefolder", "data.format=volume", "data.num_workers=0",
            "data.foreground=0.5", "data.min_foreground=0.1", f"data.volume_cache={tmp_path / 'cache'}"]
    proc = run_cli("pretrain", "-o", str(tmp_path / "pre"), *data, "data.volume_norm=zscore",
                   "model.name=mae_vit_debug_patch4_32", "model.in_chans=1", "train.epochs=1", "train.warmup_epochs=0",
                   "train.batch_size=8", "train.progress=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("volumes surveyed: 40 slices of 4 volumes, 16 kept") == 1  # then from memory
    assert "4 volumes read now, 0 from data.volume_cache" in proc.stderr
    assert len(list((tmp_path / "cache").glob("survey-*.json"))) == 4
    import yaml

    saved = yaml.safe_load((tmp_path / "pre" / "config.yaml").read_text())["data"]
    assert saved["volume_norm"] == "zscore" and len(source) == 16
    assert abs(saved["mean"][0] - float(pixels.mean())) < 1e-4 and abs(saved["std"][0] - float(pixels.std())) < 1e-3
    checkpoint = str(tmp_path / "pre" / "model-last.pth")
    data.append("data.holdout=0.25")  # kNN's queries: a held-out volume (the folder has no test/ of its own)
    plain = run_cli("knn", "--checkpoint", checkpoint, *data, "model.name=auto", "knn.k=3")
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert "was trained on volumes scaled with data.volume_norm=zscore, but this run reads them with " \
           "data.volume_norm=none" in plain.stderr
    scaled = run_cli("knn", "--checkpoint", checkpoint, *data, "data.volume_norm=zscore", "model.name=auto", "knn.k=3")
    assert scaled.returncode == 0, scaled.stderr[-3000:]
    assert "0 volumes read now, 4 from data.volume_cache" in scaled.stderr  # the pretraining's surveys
    assert f"data.mean=[{saved['mean'][0]:.6g}]" in scaled.stderr and "was trained on" not in scaled.stderr


SHARED_SURVEY = """
import json, os, sys, types
from pathlib import Path
import numpy as np
import torch.distributed as dist
from openmae.data.filelist import FileList
from openmae.data import arrays as arrays_module, survey as survey_module, stamps as stamps_module, volumes as volumes_module
from openmae.data.arrays import band_stats
from openmae.data.images import BadImageError
from openmae.data.ranks import shared_by_ranks
from openmae.data.survey import Settings
from openmae.data.volumes import FileVolumes

if sys.argv[3] == "nodes":
    os.environ["LOCAL_RANK"] = "0"  # each rank the first (and only) of its node
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
root, bad_file = Path(sys.argv[1]), Path(sys.argv[2])
read = []
surveyed = survey_module.survey_volume
survey_module.survey_volume = lambda scan, *args: read.append(scan.path.name) or surveyed(scan, *args)
headers = []
scanned = volumes_module.scan_volume
volumes_module.scan_volume = lambda path, *args: headers.append(Path(path).name) or scanned(path, *args)
measured = []
pixels = arrays_module._measured_pixels
arrays_module._measured_pixels = lambda source, index, budget: measured.append(index) or pixels(source, index, budget)
stat_calls = []
stamps_module.os = types.SimpleNamespace(stat=lambda p: stat_calls.append(os.path.basename(os.fsdecode(p))) or os.stat(p))
stamps_module.STAMP_CHUNK, stamps_module.STAMP_SLOW_S = 2, 0.0  # every stat as if it waited: shared
settings = Settings("zscore", foreground=0.5, min_foreground=0.1)
files = sorted(root.glob("*.nii"))
with shared_by_ranks(rank, world):
    shared = FileVolumes(files, None, 1, [], cache=str(root / f"cache{rank}"), survey=settings)
    first, stated = list(read), sorted(set(stat_calls))
    stamps = stamps_module.file_stamps(FileList(files))
    stamps_module.STAMP_SLOW_S, stat_calls[:] = 1.0, []  # no stat waits: each rank stats every file
    local = stamps_module.file_stamps(FileList(files))
    stated_local = sorted(set(stat_calls))
    stats = band_stats(shared, count=9)  # 9 of its 20 slices
    try:
        FileVolumes([*files, bad_file], None, 1, [], bad_files="fail", survey=settings)
        failed = ""
    except BadImageError as err:
        failed = str(err)
alone = FileVolumes(files, None, 1, [], survey=settings)  # outside the block: from this process's memory
if rank == 1:
    volumes_module._HEADERS.clear()  # as if a file had changed on rank 1's node alone
kept, measured_kept = len(headers), len(measured)
with shared_by_ranks(rank, world):
    rebuilt = FileVolumes(files, None, 1, [], cache=str(root / f"cache{rank}"), survey=settings)
    rebuilt_stats = band_stats(rebuilt, count=9)
(root / f"rank{rank}.json").write_text(json.dumps({
                  "rank": rank, "read": first, "stated": stated, "stamps": stamps, "local": local,
                  "stated_local": stated_local, "reread": headers[kept:],
                  "rebuilt": [[v.hex() for v in vs] for vs in rebuilt_stats] == [[v.hex() for v in vs] for vs in stats],
                  "headers": headers[:kept], "then": read[len(first):], "counts": shared.counts, "failed": failed,
                  "measured": measured[:measured_kept], "stats": [[v.hex() for v in vs] for vs in stats],
                  "surveys": [list(map(repr, (s.kept, s.shift, s.scale))) for s in shared.surveys],
                  "cached": len(list((root / f"cache{rank}").glob("survey-*.json"))), "same": alone.surveys == shared.surveys,
                  "headers_kept": len(list((root / f"cache{rank}").glob("headers-*.json")))}))
dist.destroy_process_group()  # leaving it to the exit aborts a gloo process now and then (SIGABRT)
"""


@pytest.mark.parametrize("layout", ["one node", "nodes"])
def test_ranks_share_the_survey_and_band_statistics_each_reading_its_part(tmp_path, monkeypatch, layout):
    """Under torchrun the ranks building the training data survey every world-size-th volume each and exchange the
    results: two ranks read five volumes between them (3 and 2, none twice), each ends with every survey, equal to
    one process's own, keeps only its part in data.volume_cache, and an unreadable volume (bad_files=fail) raises the
    same error on both ranks, not on the one that read it alone (which would leave the other waiting). The band
    statistics (data.mean / std measured) likewise: each rank measures alternate files, and both end with one
    process's numbers to the last bit. So are the volumes' headers: each rank reads its part, and where a stat waits
    (a network file system) stats its chunks of files for the key of the headers' memo (the same key on both ranks
    and in one process); where none waits, every file itself. A rank whose headers are no longer kept (its files
    changed) reads them again with the others, which do not go on without it. Each rank has its own
    data.volume_cache here, as each node would on its own disk: on one node the main rank keeps every header; on two
    nodes of one rank each, the first rank of each node does (it was the main rank's alone, so the other node's rank
    read its part again at every start)."""

    from openmae.data import stamps as stamps_module
    from openmae.data.arrays import band_stats
    from openmae.data.filelist import FileList
    from openmae.data.stamps import file_stamps
    from openmae.data.survey import Settings
    from openmae.data.volumes import FileVolumes

    for v in range(5):
        save_nifti(tmp_path / f"{v}.nii", body_volume(1.0 + v, 10.0 * v), "LPS")
    bad = tmp_path / "bad" / "nan.npy"
    bad.parent.mkdir()
    np.save(bad, np.full((4, 6, 6), np.nan, np.float32))
    script = tmp_path / "shared_survey.py"
    script.write_text(SHARED_SURVEY)
    proc = torchrun(str(script), str(tmp_path), str(bad), layout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]  # a file each: the
    # ranks' prints could share a line
    assert [sorted(r["read"]) for r in ranks] == [["0.nii", "2.nii", "4.nii"], ["1.nii", "3.nii"]]
    # the headers likewise, for both builds in the block (the second list has the bad file last); outside the block
    # each rank reads all five (another data.volume_cache: not what was read before)
    every = [f"{v}.nii" for v in range(5)]
    assert [r["headers"] for r in ranks] == [["0.nii", "2.nii", "4.nii"] * 2 + every,
                                             ["1.nii", "3.nii", "1.nii", "3.nii", "nan.npy"] + every]
    assert [r["cached"] for r in ranks] == [3, 2] and all(r["same"] for r in ranks)
    # rank 1 alone without the headers in memory (its files changed): none goes on alone. Each rank looks its part
    # up in its data.volume_cache. On one node the main rank alone kept every header (the folder's one record):
    # rank 0 finds 0, 2 and 4 there, rank 1 nothing in its own, so 1 and 3 are read again, one by each rank. On two
    # nodes each node's rank kept them all: nothing is read again
    if layout == "one node":
        assert [r["headers_kept"] for r in ranks] == [1, 0]
        assert [r["reread"] for r in ranks] == [["1.nii"], ["3.nii"]]
    else:
        assert [r["headers_kept"] for r in ranks] == [1, 1]
        assert [r["reread"] for r in ranks] == [[], []]
    assert all(r["rebuilt"] for r in ranks)
    # the files' sizes and times (the headers' memo key), where a stat waits: a chunk of two files each in turn,
    # one digest; where none waits, every file on each rank, the same digest
    assert [r["stated"] for r in ranks] == [["0.nii", "1.nii", "4.nii"], ["2.nii", "3.nii"]]
    assert [r["stated_local"] for r in ranks] == [every, every]
    monkeypatch.setattr(stamps_module, "STAMP_CHUNK", 2)
    want = file_stamps(FileList(sorted(tmp_path.glob("*.nii"))))
    assert ranks[0]["stamps"] == ranks[1]["stamps"] == ranks[0]["local"] == ranks[1]["local"] == want
    one = FileVolumes(sorted(tmp_path.glob("*.nii")), None, 1, [],
                      survey=Settings("zscore", foreground=0.5, min_foreground=0.1))
    want = [list(map(repr, (s.kept, s.shift, s.scale))) for s in one.surveys]
    assert ranks[0]["surveys"] == ranks[1]["surveys"] == want and ranks[0]["counts"] == one.counts == [4] * 5
    picked = [int(i * 20 / 9) for i in range(9)]
    assert [r["measured"] for r in ranks] == [picked[0::2], picked[1::2]]
    assert ranks[0]["stats"] == ranks[1]["stats"] == [[v.hex() for v in vs] for vs in band_stats(one, count=9)]
    # the second build: the five from memory, the sixth (rank 1's part) unreadable; rank 0 raises rank 1's error
    assert [r["then"] for r in ranks] == [[], ["nan.npy"]]
    assert ranks[0]["failed"] == ranks[1]["failed"] == f"{bad}: none of its 4 slices could be read"


def test_headers_read_in_forked_processes_equal_one_processs(tmp_path, monkeypatch):
    """A long list of headers (a DICOM series stored a slice a file) goes to forked processes once its first files
    predict more than POOL_AFTER_S: the same volumes, labels and unreadable files as read in one process."""
    from openmae.data import ranks
    from openmae.data import volumes as volumes_module
    from openmae.data.volumes import read_headers

    rng = np.random.default_rng(3)
    names = [f"IM{k:03d}.dcm" for k in range(60)]  # 46 after the 16 read first: 2 processes, 16 or more each
    write_series(tmp_path / "ct", rng.integers(0, 4096, (60, 6, 5)), "1.2.3.9", names,
                 positions=[(0.0, 0.0, 2.0 * k) for k in rng.permutation(60)], orientation=(1, 0, 0, 0, 1, 0))
    (tmp_path / "ct" / "IM999.dcm").write_bytes(b"not a DICOM file")
    np.save(tmp_path / "stack.npy", np.zeros((3, 4, 4), np.float32))
    files = [*sorted((tmp_path / "ct").iterdir()), tmp_path / "stack.npy"]
    labels = [0] * 61 + [1]
    alone = read_headers(files, labels, "axial", "", "volumes")
    volumes_module._HEADERS.clear()
    forked = []
    monkeypatch.setattr(ranks, "pool_size", lambda: 2)
    monkeypatch.setattr(ranks, "POOL_AFTER_S", 0.0)
    monkeypatch.setattr(ranks, "_in_processes", lambda *a, spread=ranks._in_processes: forked.append(1) or spread(*a))
    pooled = read_headers(files, labels, "axial", "", "volumes")
    assert forked == [1] and pooled[0] == alone[0] and pooled[1] == alone[1] == [0, 1]
    assert [str(e) for e in pooled[2]] == [str(e) for e in alone[2]] and "IM999.dcm" in str(pooled[2][0])
    assert [(s.kind, s.slices) for s in pooled[0]] == [("series", 60), ("stack", 3)]


def test_headers_are_read_once_per_process_until_a_file_changes(tmp_path, monkeypatch):
    """A run builds its training volumes again (statistics, kNN monitor): the headers of the same files, unchanged,
    with the same settings are read once per process; a file whose time or size changed is read again, and so is
    the list read with another setting."""
    import os

    from openmae.data import volumes as volumes_module
    from openmae.data.volumes import FileVolumes

    files = []
    for v in range(3):
        np.save(tmp_path / f"{v}.npy", np.full((3 + v, 6, 6), v, np.float32))
        files.append(tmp_path / f"{v}.npy")
    read = []
    scanned = volumes_module.scan_volume
    monkeypatch.setattr(volumes_module, "scan_volume", lambda path, *args: read.append(path.name) or scanned(path, *args))
    first = FileVolumes(files, [0, 1, 1], 1, ["a", "b"])
    again = FileVolumes(files, [0, 1, 1], 1, ["a", "b"])
    assert read == ["0.npy", "1.npy", "2.npy"] and again.counts == first.counts == [3, 4, 5]
    assert again.labels == first.labels == [0, 1, 1] and again.scans == first.scans and again.scans is not first.scans
    np.save(tmp_path / "1.npy", np.full((7, 6, 6), 1, np.float32))
    stat = os.stat(tmp_path / "1.npy")
    os.utime(tmp_path / "1.npy", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    changed = FileVolumes(files, [0, 1, 1], 1, ["a", "b"])
    assert changed.counts == [3, 7, 5] and read[3:] == ["0.npy", "1.npy", "2.npy"]
    FileVolumes(files, None, 1, [])  # other labels: another list of volumes
    assert len(read) == 9


def test_volumes_surveyed_again_unchanged_come_from_memory_without_a_stat(tmp_path, monkeypatch):
    """The same volume files, unchanged, surveyed again with the same settings (a run's later builds of its training
    data) take every survey from memory without a per-volume key (a stat of every file of a series); a changed file
    keys every volume again and reads its own alone, and so do other settings (no read: each volume's kept survey).
    The keys resolve each folder once a build, not once a volume."""
    import os

    from openmae.data import survey as survey_module
    from openmae.data.survey import Settings
    from openmae.data.volumes import FileVolumes

    files = []
    for v in range(3):
        files.append(tmp_path / "ab"[v // 2] / f"{v}.npy")  # two in a, one in b
        files[-1].parent.mkdir(exist_ok=True)
        np.save(files[-1], np.arange(36 * (3 + v), dtype=np.float32).reshape(3 + v, 6, 6) * (v + 1))
    keyed, read, resolved = [], [], []
    monkeypatch.setattr(survey_module, "THREADS", 1)  # two threads may resolve a folder at once, alike
    realpath = os.path.realpath
    monkeypatch.setattr(survey_module.os.path, "realpath", lambda p, **k: resolved.append(p) or realpath(p, **k))
    key, surveyed = survey_module._key, survey_module.survey_volume
    monkeypatch.setattr(survey_module, "_key", lambda scan, *a: keyed.append(scan.path.name) or key(scan, *a))
    monkeypatch.setattr(survey_module, "survey_volume", lambda scan, *a: read.append(scan.path.name) or surveyed(scan, *a))
    settings = Settings("zscore")
    first = FileVolumes(files, None, 1, [], survey=settings)
    assert sorted(keyed) == sorted(read) == ["0.npy", "1.npy", "2.npy"] and [resolved.count(str(tmp_path / f)) for f in "ab"] == [1, 1]
    again = FileVolumes(files, None, 1, [], survey=settings)
    assert again.surveys == first.surveys and len(keyed) == len(read) == 3  # no key, no read
    stat = os.stat(files[1])
    np.save(files[1], np.full((4, 6, 6), 7.0, np.float32))
    os.utime(files[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    changed = FileVolumes(files, None, 1, [], survey=settings)
    assert sorted(keyed[3:]) == ["0.npy", "1.npy", "2.npy"] and read[3:] == ["1.npy"]
    assert changed.surveys[0] == first.surveys[0] and changed.surveys[1] != first.surveys[1]
    FileVolumes(files, None, 1, [], bad_files="fail", survey=settings)  # another setting: keyed, not read
    assert len(keyed) == 9 and len(read) == 4


def test_memos_keep_the_entries_last_stored_or_read():
    from openmae.data.memo import Recent

    memo = Recent(2)
    memo["a"], memo["b"] = 1, 2
    assert memo["a"] == 1  # read: now the most recent
    memo["c"] = 3
    assert "b" not in memo and memo.get("a") == 1 and memo.get("b") is None and len(memo) == 2
    memo["d"] = 4  # a was read by get after c was stored: c goes
    assert ("a" in memo, "c" in memo, "d" in memo) == (True, False, True)
    memo.fit(3)
    memo["e"] = 5
    assert len(memo) == 3 and memo.size == 3
    memo.fit(1)  # never shrinks
    assert memo.size == 3
    with pytest.raises(ValueError, match="at least one entry, got size=0"):
        Recent(0)


def test_a_long_lived_process_keeps_the_headers_and_surveys_of_recent_builds_only(tmp_path, monkeypatch):
    """A notebook building ever other lists of volumes keeps the headers of the last four and the whole-list surveys
    of the last eight; each volume's survey is kept for at least twice the largest build, so that a build of some of
    a list's volumes (the kNN monitor's) reads none of them again."""
    from openmae.data import survey as survey_module
    from openmae.data import volumes as volumes_module
    from openmae.data.survey import Settings
    from openmae.data.volumes import FileVolumes

    files = []
    for v in range(10):
        files.append(tmp_path / f"{v}.npy")
        np.save(files[-1], np.arange(36 * 3, dtype=np.float32).reshape(3, 6, 6) + v)
    for memo in (volumes_module._HEADERS, survey_module._SURVEYED, survey_module._SURVEYS):
        memo.clear()
    monkeypatch.setattr(survey_module._SURVEYS, "size", 2)  # less than a build: grown to fit
    headers, surveyed = [], []
    scanned, survey_volume = volumes_module.scan_volume, survey_module.survey_volume
    monkeypatch.setattr(volumes_module, "scan_volume", lambda path, *a: headers.append(path.name) or scanned(path, *a))
    monkeypatch.setattr(survey_module, "survey_volume",
                        lambda scan, *a: surveyed.append(scan.path.name) or survey_volume(scan, *a))
    settings = Settings("zscore")
    FileVolumes(files[:3], None, 1, [], survey=settings)
    assert len(headers) == len(surveyed) == 3 and survey_module._SURVEYS.size == 6
    FileVolumes(files[:2], None, 1, [], survey=settings)  # some of its volumes: headers read, no survey read
    assert len(headers) == 5 and len(surveyed) == 3
    for v in range(10):  # ten lists of one volume each
        FileVolumes([files[v]], None, 1, [], survey=settings)
    assert len(volumes_module._HEADERS) == 4 and len(survey_module._SURVEYED) == 8
    assert len(survey_module._SURVEYS) == 6  # the last six volumes surveyed
    before = len(headers)
    FileVolumes([files[9]], None, 1, [], survey=settings)  # among the last four: from memory
    assert len(headers) == before
    FileVolumes(files[:3], None, 1, [], survey=settings)  # dropped: read again, its volumes' surveys too
    assert len(headers) == before + 3 and sorted(surveyed[-3:]) == ["0.npy", "1.npy", "2.npy"]


def test_file_stamps_change_with_a_files_size_time_or_presence_not_with_how_they_are_read(tmp_path, monkeypatch):
    """The key of the headers' memo: one digest of the files' sizes and times however many threads stat the chunks;
    another when a file's time or size changes or a file goes missing. Threads only where a rank's first stats were
    slow (a network file system), one thread from a local disk."""
    import os

    from openmae.data import stamps as stamps_module
    from openmae.data.filelist import FileList
    from openmae.data.stamps import file_stamps

    files = []
    for v in range(7):
        (tmp_path / f"{v}.dcm").write_bytes(b"x" * v)
        files.append(tmp_path / f"{v}.dcm")
    files = FileList(files)
    threads = []
    chunk_size, slow_s = stamps_module.STAMP_CHUNK, stamps_module.STAMP_SLOW_S
    shared_map = stamps_module.shared_map
    monkeypatch.setattr(stamps_module, "shared_map",
                        lambda *a, **k: ("threads" in k and threads.append(k["threads"])) or shared_map(*a, **k))
    for chunk in (1, 3, 7, 1000):
        monkeypatch.setattr(stamps_module, "STAMP_CHUNK", chunk)
        monkeypatch.setattr(stamps_module, "STAMP_SLOW_S", 1.0)
        alone = file_stamps(files)
        monkeypatch.setattr(stamps_module, "STAMP_SLOW_S", 0.0)
        assert file_stamps(files) == alone
    assert threads == [8] * 4  # in one process: threads only where a stat waited
    monkeypatch.setattr(stamps_module, "STAMP_CHUNK", chunk_size)
    monkeypatch.setattr(stamps_module, "STAMP_SLOW_S", slow_s)
    assert file_stamps(files) == alone  # the default chunks (the 7 files in one), as the 1000's
    monkeypatch.setattr(stamps_module, "STAMP_CHUNK", 3)  # the changes below in the second and third chunks
    digest = file_stamps(files)
    stat = os.stat(files[3])
    os.utime(files[3], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    touched = file_stamps(files)
    stat = os.stat(files[5])
    (tmp_path / "5.dcm").write_bytes(b"y" * 6)
    os.utime(files[5], ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the size alone changed
    resized = file_stamps(files)
    os.remove(files[6])
    assert len({digest, touched, resized, file_stamps(files)}) == 4


def test_survey_keys_name_files_as_their_resolved_paths(tmp_path, monkeypatch):
    """A survey's key (the name of its file in data.volume_cache, kept from run to run) resolves each file's folder
    once instead of each file, and is the same as resolving each file: for relative paths, '.' and '//' in them, a
    file inside a linked folder, a linked file, and a series' files."""
    import hashlib
    import os
    from dataclasses import asdict
    from types import SimpleNamespace

    from openmae.data.survey import Settings, _key

    def by_resolving(scan, settings):  # the key as it was computed before: each file resolved
        files = scan.members or (scan.path,)
        stamps = [(str(Path(f).resolve()), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
        what = repr((stamps, scan.kind, scan.axis, scan.rows, scan.cols, scan.volume, scan.samples, asdict(settings)))
        return hashlib.sha1(what.encode()).hexdigest()[:20]

    real = tmp_path / "real" / "series"
    real.mkdir(parents=True)
    for k in range(3):
        (real / f"IM{k}.dcm").write_bytes(b"x" * (k + 1))
    (tmp_path / "linked").symlink_to(tmp_path / "real")
    (tmp_path / "one.nii").symlink_to(real / "IM1.dcm")
    monkeypatch.chdir(tmp_path / "real")
    settings = Settings("zscore", foreground=0.5)
    cases = [real / "IM0.dcm", Path("series/IM1.dcm"), f"{tmp_path}/./real//series/IM2.dcm",
             tmp_path / "linked" / "series" / "IM0.dcm", tmp_path / "one.nii", Path("../one.nii")]
    for path in cases:
        scan = SimpleNamespace(path=Path(path), members=(), kind="dicom", axis=0, rows=1, cols=2, volume=0, samples=1)
        assert _key(scan, settings) == by_resolving(scan, settings), path
    members = (real / "IM0.dcm", "series/IM1.dcm", tmp_path / "linked" / "series" / "IM2.dcm", tmp_path / "one.nii")
    series = SimpleNamespace(path=real / "IM0.dcm", members=members, kind="series", axis=0, rows=1, cols=2, volume=0,
                             samples=1)
    assert _key(series, settings) == by_resolving(series, settings)
    assert _key(series, settings) != _key(SimpleNamespace(**{**vars(series), "members": members[:3]}), settings)


def test_volume_headers_are_kept_in_the_volume_cache_for_unchanged_files(tmp_path, monkeypatch, caplog):
    """With data.volume_cache, a new process reads no header of an unchanged file (a DICOM slice's takes 1.5 ms:
    300,000 slice files took 7.5 minutes at every run's start); a file rewritten or added is read, it alone; an
    unreadable one is not parsed again either, and says the same."""
    from openmae.data import volumes
    from openmae.data.memo import Recent

    root = tmp_path / "scans"
    make_volume_folder(root)
    (root / "broken.nii.gz").write_bytes((root / "head.nii.gz").read_bytes()[:60])  # cut inside its header
    cfg = DataConfig(name="folder", path=str(root), format="volume", volume_cache=str(tmp_path / "cache"))
    parsed: list[str] = []
    real = volumes.scan_volume
    monkeypatch.setattr(volumes, "scan_volume", lambda path, *args: parsed.append(Path(path).name) or real(path, *args))

    def build_in_a_new_process():
        parsed.clear()
        monkeypatch.setattr(volumes, "_HEADERS", Recent(4))  # what a new process starts with
        with caplog.at_level(logging.INFO, logger="openmae.data.volumes"):
            caplog.clear()
            source = build_source(cfg, "train", 1)
        return source, [source.describe(i) for i in range(len(source))]

    first, described = build_in_a_new_process()
    assert sorted(parsed) == sorted(p.name for p in root.iterdir()) and len(parsed) == 6
    assert "volume headers: 6 read, 0 kept in data.volume_cache" in caplog.text
    again, described_again = build_in_a_new_process()
    assert parsed == [] and "volume headers: 0 read, 6 kept in data.volume_cache" in caplog.text
    assert again.scans == first.scans and described_again == described
    assert "1 of 6 volume files could not be read" in caplog.text and "broken.nii.gz" in caplog.text
    np.save(root / "stack.npy", np.ones((4, 9, 8), np.float32))  # rewritten: 4 slices now
    np.save(root / "added.npy", np.ones((2, 9, 8), np.float32))
    third, _ = build_in_a_new_process()
    assert sorted(parsed) == ["added.npy", "stack.npy"] and len(third) == len(first) + 3
    assert "volume headers: 2 read, 5 kept in data.volume_cache" in caplog.text


def test_a_stop_during_the_volume_survey_cuts_it_and_the_run_stops_before_its_first_step(tmp_path, monkeypatch,
                                                                                         caplog):
    """SIGTERM while the training volumes are surveyed (thousands of files: minutes) skips the volumes left and stops
    the run at once, before its first step (the survey went on to the last volume, then the run stopped); the same
    command with --resume=auto then surveys the volumes left and trains."""
    import os
    import signal

    from openmae.config import load_config
    from openmae.data import survey as survey_module
    from openmae.engine.checkpoint import STOPPED, CheckpointManager
    from openmae.engine.pretrain import PretrainConfig, pretrain

    root = tmp_path / "mr"
    root.mkdir()
    for v in range(6):
        save_nifti(root / f"{v}.nii", body_volume(1.0 + v, 10.0 * v), "LPS")
    cfg = load_config(PretrainConfig, overrides=[
        f"data.path={root}", "data.name=folder", "data.format=volume", "data.num_workers=0", "data.volume_norm=zscore",
        "data.mean=[0.0]", "data.std=[1.0]",  # set: the survey comes with the training data, under the stop handlers
        "model.name=mae_vit_debug_patch4_32", "model.in_chans=1", "train.epochs=1", "train.warmup_epochs=0",
        "train.batch_size=8", "train.progress=false", "train.tensorboard=false", "pretrain.vis_images=0",
        f"train.output_dir={tmp_path / 'run'}"])
    surveyed, survey_volume = [], survey_module.survey_volume

    def signalled(scan, *args):
        surveyed.append(scan.path.name)
        if len(surveyed) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return survey_volume(scan, *args)

    monkeypatch.setattr(survey_module, "survey_volume", signalled)
    monkeypatch.setattr(survey_module, "THREADS", 1)  # one volume at a time: none other in hand at the signal
    with caplog.at_level(logging.WARNING, logger="openmae.train"):
        assert pretrain(cfg)["stopped_by"] == "SIGTERM"
    assert surveyed == ["0.nii", "1.nii"]  # the four volumes left were skipped
    assert "stopped by SIGTERM before the first step, while its training data was built: nothing new to save. The " \
        "same command with --resume=auto starts the run again" in caplog.text
    assert json.loads((tmp_path / "run" / STOPPED).read_text())["step"] == 0
    assert CheckpointManager(tmp_path / "run").list() == []
    surveyed.clear()
    monkeypatch.setattr(survey_module, "survey_volume", lambda scan, *a: surveyed.append(scan.path.name)
                        or survey_volume(scan, *a))
    cfg.train.resume = "auto"
    assert "stopped_by" not in pretrain(cfg)
    assert surveyed == ["2.nii", "3.nii", "4.nii", "5.nii"]  # the two surveyed before the stop were kept
    assert not (tmp_path / "run" / STOPPED).exists()
