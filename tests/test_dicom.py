"""DICOM files (data.format=array): pydicom's own sample scans in every compression read alike, the scanner's units
(modality LUT) and MONOCHROME1 handled, files that are not single images refused or skipped, a missing decoder a
clear stop, and pretraining plus kNN on a folder of DICOM radiographs made from Fashion-MNIST."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom  # in the dev extra (openmae[medical] for users)
import pytest
import yaml
from helpers import call_cli, run_cli
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from openmae.data.arrays import read_array
from openmae.data.images import BadImageError


def new_dataset(sop_class: str = SecondaryCaptureImageStorage) -> Dataset:
    """An empty data set of ``sop_class`` with its file meta, uncompressed, ready for pixel data."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    return ds


def write_dicom(path: Path, stored: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 12,
                slope: float | None = None, intercept: float | None = None) -> None:
    """``stored`` (H, W) unsigned as a single-frame DICOM file, with a rescale when given."""
    ds = new_dataset()
    ds.set_pixel_data(stored.astype(np.uint16), photometric, bits)
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.save_as(path, enforce_file_format=True)


def test_sample_scans_in_every_compression_read_alike_in_their_units():
    plain = read_array(get_testdata_file("MR_small.dcm"), 1)
    assert plain.shape == (1, 64, 64) and plain.min() == 127 and plain.max() == 2145
    for name in ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
                 "MR_small_bigendian.dcm", "MR_small_implicit.dcm"):  # RLE, JPEG 2000, JPEG-LS, byte orders
        assert np.array_equal(read_array(get_testdata_file(name), 1), plain), name
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))  # stored values with a rescale to Hounsfield units
    assert (ct.RescaleSlope, ct.RescaleIntercept) == (1, -1024)
    hu = read_array(get_testdata_file("CT_small.dcm"), 1)
    assert np.array_equal(hu[0].numpy(), ct.pixel_array.astype(np.float32) - 1024) and hu.min() == -896
    rgb = read_array(get_testdata_file("SC_rgb_jpeg_gdcm.dcm"), 3)  # JPEG lossless (pylibjpeg), colour
    assert rgb.shape == (3, 100, 100) and rgb.max() == 255
    extended = read_array(get_testdata_file("JPGExtended.dcm"), 1)  # 12-bit JPEG: only pylibjpeg decodes it
    assert extended.shape == (1, 1024, 256) and extended.max() == 264


def test_monochrome1_and_rescaled_files_read_on_one_scale(tmp_path):
    """The same picture stored three ways (plain; MONOCHROME1, darker is higher; rescaled by slope 2 and intercept
    -1000) reads as the same values; MONOCHROME1 is turned over the stored range."""
    values = (np.arange(24 * 20).reshape(24, 20) * 8) % 4096  # 12-bit values
    write_dicom(tmp_path / "plain.dcm", values)
    write_dicom(tmp_path / "inverted.dcm", 4095 - values, "MONOCHROME1")
    write_dicom(tmp_path / "rescaled.dcm", values // 2 + 500, slope=2, intercept=-1000)  # 2 * (v // 2 + 500) - 1000
    plain = read_array(tmp_path / "plain.dcm", 1)
    assert np.array_equal(plain[0].numpy(), values.astype(np.float32))
    assert np.array_equal(read_array(tmp_path / "inverted.dcm", 1), plain)
    assert np.array_equal(read_array(tmp_path / "rescaled.dcm", 1)[0].numpy(), (values // 2 * 2).astype(np.float32))


def test_files_that_are_not_one_image_are_refused_or_skipped(tmp_path):
    cases = {"rtdose.dcm": "a DICOM file of 15 frames; data.format=array reads one image a file: read its frames as "
                           "slices with data.format=volume",
             "MR_truncated.dcm": "pixel data is less than expected",
             "rtstruct.dcm": "no DICOM image in it"}
    for name, message in cases.items():
        with pytest.raises(BadImageError, match=message):
            read_array(get_testdata_file(name), 1)
    (tmp_path / "text.dcm").write_text("not a scan")
    with pytest.raises(BadImageError, match="text.dcm: .*no DICOM image in it"):
        read_array(tmp_path / "text.dcm", 1)
    with pytest.raises(BadImageError, match="read as hwc: 3 bands, but the model takes model.in_chans=1; set "
                                            "model.in_chans=3"):
        read_array(get_testdata_file("ExplVR_BigEnd.dcm"), 1)  # colour for a one-band model


def test_a_missing_decoder_stops_saying_what_to_install():
    script = ("import sys\n"
              "for name in ('pylibjpeg', 'libjpeg', 'openjpeg', 'gdcm'): sys.modules[name] = None\n"  # not installed
              "from pydicom.data import get_testdata_file\n"
              "from openmae.data.arrays import read_array\n"
              "read_array(get_testdata_file('JPGExtended.dcm'), 1)")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 1 and "ImportError: " in proc.stderr, proc.stderr[-2000:]
    assert "no installed decoder reads its compression (JPEG Extended" in proc.stderr
    assert "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (or openmae[medical]" in proc.stderr


def fashion_mnist(datasets: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    with gzip.open(datasets / "fashion-mnist" / f"{prefix}-images-idx3-ubyte.gz") as fh:
        images = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(datasets / "fashion-mnist" / f"{prefix}-labels-idx1-ubyte.gz") as fh:
        labels = np.frombuffer(fh.read(), np.uint8, offset=8)
    return images, labels


def test_pretrain_and_knn_on_a_folder_of_dicom_radiographs(tmp_path, datasets):
    """Fashion-MNIST trousers and bags as 12-bit DICOM files (an ImageFolder), stored three ways in turn as above,
    one unreadable file among them: pretraining measures the band's statistics on the scanner's scale, trains, and
    its encoder tells the classes apart by kNN."""
    root = tmp_path / "scans"
    for split, count in (("train", 150), ("test", 50)):
        images, labels = fashion_mnist(datasets, split)
        for label, name in ((1, "trouser"), (8, "bag")):
            (root / split / name).mkdir(parents=True)
            for i, image in enumerate(images[labels == label][:count]):
                values = image.astype(np.int64) * 16  # 0..4080
                path = root / split / name / f"{i:04d}.dcm"
                if i % 3 == 0:
                    write_dicom(path, values)
                elif i % 3 == 1:
                    write_dicom(path, 4095 - values, "MONOCHROME1")
                else:
                    write_dicom(path, values // 2 + 500, slope=2, intercept=-1000)
    (root / "train" / "bag" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\1" * 50)
    images, labels = fashion_mnist(datasets, "train")
    every = np.concatenate([images[labels == k][:150] for k in (1, 8)]).astype(np.float64) * 16
    proc = pretrain_trousers_and_bags(tmp_path, root, "array", every)
    assert "skipping unreadable image" in proc.stderr and "broken.dcm" in proc.stderr


def pretrain_trousers_and_bags(tmp_path: Path, root: Path, data_format: str, every: np.ndarray):
    """Pretrains on the ImageFolder ``root`` of trousers and bags read with ``data.format``, then checks the run:
    the measured statistics near those of ``every`` training pixel (256 of 300 items read), the loss falling and
    kNN telling the classes apart (> 90%; chance is 50). Returns the pretraining's process."""
    data = [f"data.path={root}", "data.name=imagefolder", f"data.format={data_format}", "data.num_workers=2"]
    proc = run_cli("pretrain", "-o", str(tmp_path / "pre"), *data, "model.name=mae_vit_debug_patch4_32",
                   "model.in_chans=1", "train.epochs=5", "train.warmup_epochs=1", "train.batch_size=32",
                   "train.blr=1.5e-3", "train.progress=false", "train.log_every_steps=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = yaml.safe_load((tmp_path / "pre" / "config.yaml").read_text())["data"]
    assert abs(saved["mean"][0] - every.mean()) < 0.02 * every.mean(), saved
    assert abs(saved["std"][0] - every.std()) < 0.02 * every.std(), saved
    metrics = [json.loads(line) for line in (tmp_path / "pre" / "metrics.jsonl").read_text().splitlines()]
    curve = [m["loss"] for m in metrics if "loss" in m]
    assert sum(curve[-3:]) / 3 < 0.85 * sum(curve[:3]) / 3, curve
    knn = call_cli("knn", "--checkpoint", str(tmp_path / "pre" / "model-last.pth"), *data, "model.name=auto")
    assert knn.returncode == 0, knn.stderr[-3000:]
    assert json.loads(knn.stdout.splitlines()[-1])["knn_top1"] > 90.0
    return proc


def test_a_folder_of_dicom_files_read_as_images_says_to_read_arrays(tmp_path):
    from openmae.data.config import DataConfig
    from openmae.data.datasets import build_source

    write_dicom(tmp_path / "scan.dcm", np.zeros((8, 8), np.int64))
    with pytest.raises(ValueError, match="no images found in .*; supported files with data.format=image: .*"
                                         "\\(data.format=array reads .npy .tif .tiff .png .dcm .dicom, "
                                         "data.format=volume .nii .nii.gz .dcm .dicom .npy .tif .tiff\\)"):
        build_source(DataConfig(name="folder", path=str(tmp_path)), "train", 1)
    assert len(build_source(DataConfig(name="folder", path=str(tmp_path), format="array"), "train", 1)) == 1
