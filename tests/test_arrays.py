"""Multi-band images stored as arrays (data.format=array): reading, per-band statistics, the augmentations, and
pretraining, kNN, fine-tuning and pictures on them."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
from helpers import call_cli, run_cli
from PIL import Image

from openmae.config import ConfigError
from openmae.data.arrays import band_stats, read_array
from openmae.data.build import eval_batches, train_dataset
from openmae.data.config import DataConfig
from openmae.data.datasets import STATS, FileArrays, stats_for
from openmae.data.images import BadImageError
from openmae.data.transforms import finetune_transform
from openmae.eval.reconstruction import reconstruct
from openmae.models import create_model

CLASSES = ("airplane", "frog")


def bands_of(photo: Path) -> np.ndarray:
    """A CIFAR-10 photo as four 16-bit bands (C, H, W): red, green, blue at 16 bits, and their brightness."""
    rgb = np.asarray(Image.open(photo).convert("RGB"), dtype=np.uint16) * 257  # (H, W, 3), 0..65535
    return np.concatenate([rgb, rgb.mean(-1, keepdims=True).astype(np.uint16)], -1).transpose(2, 0, 1)


@pytest.fixture(scope="module")
def band_folder(tmp_path_factory, datasets) -> Path:
    """CIFAR-10 photos of two classes as an ImageFolder of 4-band arrays: train/ (150 a class) and test/ (50); a
    third TIFFs (half of them uncompressed, half deflate-compressed in 16x16 tiles), the rest .npy files."""
    root = tmp_path_factory.mktemp("bands")
    for split, count in (("train", 150), ("test", 50)):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i, photo in enumerate(sorted((datasets / "cifar10" / split / name).glob("*.jpg"))[:count]):
                chw = bands_of(photo)
                if i % 3 == 0:
                    tiled = dict(tile=(16, 16), compression="zlib") if i % 2 else {}
                    tifffile.imwrite(root / split / name / f"{i:04d}.tif", chw, photometric="minisblack",
                                     planarconfig="separate", **tiled)
                else:  # half of the rest (H, W, C), as a NumPy image would be saved
                    np.save(root / split / name / f"{i:04d}.npy", chw if i % 2 else chw.transpose(1, 2, 0))
    return root


def test_read_array_layouts_and_formats(tmp_path):
    chw = np.arange(5 * 6 * 7, dtype=np.uint16).reshape(5, 6, 7)
    np.save(tmp_path / "chw.npy", chw)
    np.save(tmp_path / "hwc.npy", chw.transpose(1, 2, 0))
    tifffile.imwrite(tmp_path / "planar.tif", chw, photometric="minisblack", planarconfig="separate")
    tifffile.imwrite(tmp_path / "contig.tif", chw.transpose(1, 2, 0), photometric="minisblack", planarconfig="contig")
    np.save(tmp_path / "one.npy", chw[0].astype(np.float64))
    for name in ("chw.npy", "hwc.npy", "planar.tif", "contig.tif"):
        x = read_array(tmp_path / name, 5)
        assert x.dtype == torch.float32 and torch.equal(x, torch.from_numpy(chw.astype(np.float32))), name
    assert torch.equal(read_array(tmp_path / "one.npy", 1), torch.from_numpy(chw[:1].astype(np.float32)))
    scan = (np.arange(6 * 7, dtype=np.uint16).reshape(6, 7) * 1531)  # a 16-bit grayscale PNG: values kept, not 8-bit
    Image.fromarray(scan).save(tmp_path / "scan.png")
    assert torch.equal(read_array(tmp_path / "scan.png", 1), torch.from_numpy(scan[None].astype(np.float32)))
    palette = Image.fromarray(np.array([[0, 1], [1, 0]], dtype=np.uint8), mode="P")
    palette.putpalette([10, 20, 30, 200, 150, 100])
    palette.save(tmp_path / "palette.png")  # stored as indices 0 / 1: read as the colours they stand for
    assert read_array(tmp_path / "palette.png", 3)[:, 0, 1].tolist() == [200.0, 150.0, 100.0]
    assert torch.equal(read_array(tmp_path / "hwc.npy", 6, layout="chw"), torch.from_numpy(chw.transpose(1, 2, 0)
                                                                                             .astype(np.float32)))


@pytest.mark.parametrize("array,channels,layout,message", [
    (np.zeros((4, 9, 4)), 4, "auto", "both its first and last axes could be the 4 bands; set data.array_layout"),
    (np.zeros((6, 9, 9)), 4, "auto", "6 bands, but the model takes model.in_chans=4; set model.in_chans=6"),
    (np.zeros((9, 9, 4)), 4, "chw", "9 bands, but the model takes model.in_chans=4"),
    (np.zeros((2, 3, 9, 9)), 3, "auto", "an image array is (H, W, C), (C, H, W) or (H, W)"),
    (np.array([[1.0, np.nan], [0.0, 1.0]]), 1, "auto", "holds NaN or infinite values (1 of 4); fill nodata"),
    (np.array([["a", "b"]]), 1, "auto", "is not numeric"),
])
def test_bad_arrays_say_what_is_wrong(tmp_path, array, channels, layout, message):
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(BadImageError, match="x.npy") as err:
        read_array(tmp_path / "x.npy", channels, layout)
    assert message in str(err.value)


def test_arrays_that_would_unpickle_are_refused(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BadImageError, match="allow_pickle"):
        read_array(tmp_path / "obj.npy", 1)


def test_band_stats_equal_numpys_over_every_pixel(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.normal(loc=(10, 2000, 5), scale=(1, 300, 0), size=(8 + i, 5, 3)) for i in range(5)]  # (H, W, C)
    for i, a in enumerate(arrays):
        np.save(tmp_path / f"{i}.npy", a)
    source = FileArrays(sorted(tmp_path.glob("*.npy")), None, 3, [])
    mean, std = band_stats(source)
    pixels = np.concatenate([a.reshape(-1, 3) for a in arrays])
    assert np.allclose(mean, pixels.mean(0), rtol=1e-6) and np.allclose(std[:2], pixels.std(0)[:2], rtol=1e-5)
    assert std[2] == 1.0  # a constant band is only centred
    picked = band_stats(source, count=2)  # two files spread evenly: the first and the third
    both = np.concatenate([arrays[0].reshape(-1, 3), arrays[2].reshape(-1, 3)])
    assert np.allclose(picked[0], both.mean(0), rtol=1e-6)


def test_band_stats_read_in_forked_processes_equal_one_processs(tmp_path, monkeypatch):
    """Band statistics whose files would take long (timed on the first 16) are read in forked processes: the same
    numbers to the last bit, an unreadable file left out alike."""
    from openmae.data import ranks

    rng = np.random.default_rng(2)
    for i in range(60):
        np.save(tmp_path / f"{i:02d}.npy", rng.normal(loc=(10, 2000), scale=(1, 300), size=(6, 7, 2)))
    (tmp_path / "30.npy").write_bytes(b"not an array")
    source = FileArrays(sorted(tmp_path.glob("*.npy")), None, 2, [])
    alone = band_stats(source)
    forked = []
    monkeypatch.setattr(ranks, "pool_size", lambda: 2)
    monkeypatch.setattr(ranks, "POOL_AFTER_S", 0.0)
    monkeypatch.setattr(ranks, "_in_processes", lambda *a, spread=ranks._in_processes: forked.append(1) or spread(*a))
    assert band_stats(source) == alone and forked == [1]
    every = np.concatenate([np.load(f).reshape(-1, 2) for f in sorted(tmp_path.glob("*.npy")) if f.name != "30.npy"])
    assert np.allclose(alone[0], every.mean(0), rtol=1e-9)


def test_band_stats_of_large_scenes_read_a_few_windows(tmp_path, monkeypatch):
    """A file larger than its share of the pixels measured is measured on 256² windows of a grid, drawn from its
    index: a tiled TIFF is then never decoded whole (only the windows' tiles), a memory-mapped .npy is read in those
    windows only; the numbers are the same every run and near those of every pixel; smaller files are read whole."""
    from openmae.data.tiles import TiledBands

    rng = np.random.default_rng(0)
    scenes = [rng.normal(loc=(100, 2000, 5), scale=(10, 300, 1), size=(1300, 1400, 3)).astype(np.float32)
              for _ in range(3)]
    for i, scene in enumerate(scenes):
        tifffile.imwrite(tmp_path / f"{i}.tif", scene, tile=(256, 256), compression="zlib", photometric="rgb")
    np.save(tmp_path / "3.npy", scenes[0][:700, :700])  # 490,000 pixels: under four windows, read whole
    windows = []
    real_window = TiledBands._window
    monkeypatch.setattr(TiledBands, "_window", lambda self, *box: windows.append(box) or real_window(self, *box))
    monkeypatch.setattr(TiledBands, "read_whole", lambda self: pytest.fail("a large tiled scene was decoded whole"))
    source = FileArrays(sorted(tmp_path.glob("*.tif")) + [tmp_path / "3.npy"], None, 3, [])
    budget = 4 * 16 * 256**2  # a million pixels a file: 16 windows of the 1300x1400 scenes (of their 5x5 grid)
    mean, std = band_stats(source, pixels=budget)
    assert len(windows) == 48 and {(r1 - r0, c1 - c0) for r0, r1, c0, c1 in windows} == {(256, 256)}
    assert all(r0 % 256 == 0 and c0 % 256 == 0 for r0, _, c0, _ in windows)  # on the grid: one tile each
    assert band_stats(source, pixels=budget) == (mean, std)  # the same windows again
    every = np.concatenate([s.reshape(-1, 3) for s in scenes] + [scenes[0][:700, :700].reshape(-1, 3)]).astype(np.float64)
    assert np.allclose(mean, every.mean(0), rtol=2e-3) and np.allclose(std, every.std(0), rtol=1e-2), (mean, std)
    mapped = FileArrays([tmp_path / "big.npy"], None, 3, [])
    np.save(tmp_path / "big.npy", scenes[1])
    reads = []
    real_load = FileArrays.load
    monkeypatch.setattr(FileArrays, "load", lambda self, i: reads.append(i) or real_load(self, i))
    assert np.allclose(band_stats(mapped, pixels=budget // 4)[0], scenes[1].reshape(-1, 3).mean(0), rtol=2e-3)
    assert reads == []  # its 16 windows read from the memory map
    whole = scenes[1].reshape(-1, 3).astype(np.float64).mean(0)
    assert np.allclose(band_stats(mapped)[0], whole, rtol=1e-9) and reads == [0]  # its share: the whole file


def array_config(root: Path, **kw) -> DataConfig:
    return DataConfig(name="imagefolder", path=str(root), format="array", num_workers=0, **kw)


def test_unset_mean_std_are_measured_on_the_training_files(band_folder):
    cfg = array_config(band_folder)
    mean, std = stats_for(cfg, 4)
    files = sorted(p for p in (band_folder / "train").rglob("*") if p.suffix in (".npy", ".tif"))
    assert len(files) == 300  # more than the 256 read: those spread evenly over the split
    picked = sorted({i * 300 // 256 for i in range(256)})
    train = np.stack([read_array(files[i], 4).numpy().astype(np.float64) for i in picked])  # (256, 4, 32, 32)
    assert np.allclose(mean, train.mean((0, 2, 3)), rtol=1e-6) and np.allclose(std, train.std((0, 2, 3)), rtol=1e-5)
    assert stats_for(array_config(band_folder, mean=(1.0,) * 4, std=(2.0,) * 4), 4) == ((1.0,) * 4, (2.0,) * 4)


def test_measured_stats_are_kept_for_the_same_files_and_measured_again_when_they_change(tmp_path, monkeypatch):
    """In one process (a notebook), the same settings over the same files measure once; a file rewritten, added or
    removed since is measured again, giving what a new process would."""
    from openmae.data import datasets as datasets_module

    rng = np.random.default_rng(5)
    for i in range(4):
        np.save(tmp_path / f"{i}.npy", rng.normal(loc=(10, 50), scale=(1, 4), size=(6, 6, 2)).astype(np.float32))
    measured = []
    monkeypatch.setattr(datasets_module, "band_stats", lambda s, real=band_stats: measured.append(len(s)) or real(s))
    cfg = DataConfig(name="folder", path=str(tmp_path), format="array", num_workers=0)
    first = stats_for(cfg, 2)
    assert stats_for(cfg, 2) == first and measured == [4]  # kept
    np.save(tmp_path / "2.npy", np.full((6, 6, 2), 1000.0, dtype=np.float32))  # rewritten under its name
    os.utime(tmp_path / "2.npy", ns=(1, 1))  # a time of its own, whatever the file system's resolution
    rewritten = stats_for(cfg, 2)
    assert measured == [4, 4] and rewritten[0][0] > first[0][0] + 200
    assert rewritten == band_stats(FileArrays(sorted(tmp_path.glob("*.npy")), None, 2, []))  # as measured anew
    np.save(tmp_path / "4.npy", np.zeros((6, 6, 2), dtype=np.float32))  # added
    assert stats_for(cfg, 2) != rewritten and measured == [4, 4, 5]
    (tmp_path / "4.npy").unlink()  # removed again: the files of the second measurement, kept
    assert stats_for(cfg, 2) == rewritten and measured == [4, 4, 5]


def test_array_bands_equal_the_image_path_for_evaluation_and_follow_its_crops(band_folder, datasets):
    """The arrays' first three bands are the CIFAR-10 photos at 16 bits: normalised by 65535 times the image path's
    statistics, evaluation (at 32px: no resize) gives the photos' normalised pixels, and the training crop draws the
    image path's boxes and flips (its resampler works on floats where PIL's works on bytes: within a few grey
    levels)."""
    (mean, std), size = STATS["cifar10"], (32, 32)
    images = DataConfig(name="imagefolder", path=str(datasets / "cifar10"), num_workers=0, mean=mean, std=std)
    arrays = array_config(band_folder, mean=(*[m * 65535 for m in mean], 0.0), std=(*[s * 65535 for s in std], 1.0))
    got = torch.cat([batch.images for batch in eval_batches(arrays, "test", size, 4, 25)])[:, :3]  # in file order
    photos = [sorted((datasets / "cifar10" / "test" / c).glob("*.jpg"))[:50] for c in CLASSES]
    reference = torch.stack([
        torch.from_numpy(((bands_of(p)[:3] / 65535.0 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None])
                         .astype(np.float32)) for p in photos[0] + photos[1]])
    assert torch.allclose(got, reference, atol=1e-5)
    img_samples, _ = train_dataset(images, size, 3, 8, seed=0)
    arr_samples, _ = train_dataset(arrays, size, 4, 8, seed=0)
    img_index = {p: i for i, p in enumerate(img_samples.source.files)}
    diffs = []
    for j, path in enumerate(arr_samples.source.files[:40]):
        twin = datasets / "cifar10" / "train" / path.parent.name / f"{path.stem}.jpg"
        a = arr_samples[(j, 1234 + j)][0][:3] * torch.tensor(std)[:, None, None] * 255  # grey levels
        b = img_samples[(img_index[twin], 1234 + j)][0] * torch.tensor(std)[:, None, None] * 255
        diffs.append((a - b).abs().mean().item())
    assert max(diffs) < 2.0, diffs  # a different box or flip would differ by tens of grey levels


def test_fine_tuning_recipe_on_arrays(band_folder):
    cfg = array_config(band_folder, mean=(0.0,) * 4, std=(1.0,) * 4)
    with pytest.raises(ConfigError, match="finetune.auto_augment='rand-m9-mstd0.5-inc1' is invalid"):
        finetune_transform(cfg, (32, 32), cfg.mean, cfg.std, "rand-m9-mstd0.5-inc1", 0.25)
    with pytest.raises(ConfigError, match="finetune.color_jitter=0.4 is invalid"):
        finetune_transform(cfg, (32, 32), cfg.mean, cfg.std, "", 0.25, color_jitter=0.4)
    x = read_array(next((band_folder / "train" / "frog").glob("*.npy")), 4)
    outs = []
    for reprob in (0.0, 1.0):  # erasing comes last: the same seed draws the same crop, flip and shift before it
        torch.manual_seed(0)
        random.seed(0)  # timm's erasing draws its box from Python's generator: unseeded, the box followed earlier tests
        outs.append(finetune_transform(cfg, (24, 24), cfg.mean, cfg.std, "", reprob, shift=2)(x))
    assert outs[0].shape == (4, 24, 24)
    erased = (outs[0] != outs[1]).all(0).float().mean().item()  # one box, every band replaced by noise
    assert 0.02 <= erased <= 0.34, erased  # timm's area range 2%-33%


@pytest.mark.parametrize("override,message", [
    ("data.name=cifar10", "data.format='array' is invalid: must be 'image' for the named dataset 'cifar10'"),
    ("data.array_layout=whc", "data.array_layout='whc' is invalid: must be one of ['auto', 'hwc', 'chw']"),
    ("pretrain.vis_bands=[0,1]", "pretrain.vis_bands=(0, 1) is invalid: must be empty, one channel index (grey) or three"),
])
def test_array_settings_refused_before_work(tmp_path, override, message):
    proc = call_cli("pretrain", "--data", str(tmp_path), "-o", str(tmp_path / "run"), "data.format=array",
                    "model.name=mae_vit_debug_patch4_32", override)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]


def test_pictures_of_bands_are_stretched_per_band():
    model = create_model("mae_vit_debug_patch4_32", in_chans=5)
    imgs = torch.randn(2, 5, 32, 32)
    mean, std = (1000.0,) * 5, (300.0,) * 5  # reflectances in the thousands: a [0, 1] clamp would be all white
    rec = reconstruct(model, imgs, mean, std, stretch=True)
    for panel in (rec.original, rec.reconstruction, rec.pasted):
        assert panel.shape == (2, 5, 32, 32) and panel.min() >= 0 and panel.max() <= 1
    flat = rec.original.flatten(2)
    assert (flat.quantile(0.01, dim=2) < 0.01).all() and (flat.quantile(0.99, dim=2) > 0.99).all()


@pytest.mark.slow
def test_pretrain_knn_finetune_and_visualize_on_band_arrays(tmp_path, band_folder):
    """The whole product on 4-band 16-bit arrays (TIFF and .npy, both layouts), one unreadable file among them,
    pretraining started from the weights of an RGB model."""
    data = [f"data.path={band_folder}", "data.name=imagefolder", "data.format=array", "data.num_workers=2"]
    torch.save({"model": create_model("mae_vit_debug_patch4_32").state_dict()}, tmp_path / "rgb.pth")
    np.save(band_folder / "train" / "frog" / "broken.npy", np.full((4, 32, 32), np.nan))
    try:
        proc = run_cli("pretrain", "-o", str(tmp_path / "pre"), *data, f"pretrain.init={tmp_path / 'rgb.pth'}",
                       "model.name=auto", "model.in_chans=4", "train.epochs=6", "train.warmup_epochs=1", "train.batch_size=32",
                       "train.blr=1.5e-3", "train.progress=false", "train.log_every_steps=3", "pretrain.vis_images=4",
                       "pretrain.vis_bands=[3,0,1]")
    finally:
        (band_folder / "train" / "frog" / "broken.npy").unlink()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "patch_embed.proj.weight adapted from 3 to 4 input channels" in proc.stderr
    assert "left at their initialisation: decoder_pred.bias, decoder_pred.weight" in proc.stderr
    assert "data.mean=[" in proc.stderr and "measured on 256 training files" in proc.stderr
    assert "skipping unreadable image" in proc.stderr and "broken.npy: holds NaN" in proc.stderr
    metrics = [json.loads(line) for line in (tmp_path / "pre" / "metrics.jsonl").read_text().splitlines()]
    curve = [m["loss"] for m in metrics if "loss" in m]
    assert sum(curve[-3:]) / 3 < 0.85 * sum(curve[:3]) / 3, curve
    saved = yaml.safe_load((tmp_path / "pre" / "config.yaml").read_text())["data"]  # the normalisation it used
    assert len(saved["mean"]) == len(saved["std"]) == 4 and all(20000 < m < 45000 for m in saved["mean"]), saved
    assert f"data.mean=[{','.join(f'{v:.6g}' for v in saved['mean'])}]" in proc.stderr
    picture = Image.open(tmp_path / "pre" / "pictures" / "reconstruction-epoch0006.png")
    assert picture.size == (4 * 128 + 3 * 2, 4 * 128 + 3 * 2)
    checkpoint = str(tmp_path / "pre" / "model-last.pth")

    knn = call_cli("knn", "--checkpoint", checkpoint, *data, "model.name=auto")
    assert knn.returncode == 0, knn.stderr[-3000:]
    assert json.loads(knn.stdout.splitlines()[-1])["knn_top1"] > 60.0  # airplanes against frogs; chance is 50

    tune = call_cli("finetune", "--checkpoint", checkpoint, "-o", str(tmp_path / "ft"), *data, "model.name=auto",
                    "train.epochs=1", "train.warmup_epochs=0", "train.batch_size=32", "train.progress=false",
                    "finetune.auto_augment=")  # mixup, cutmix and random erasing as they are
    assert tune.returncode == 0, tune.stderr[-3000:]
    assert (tmp_path / "ft" / "model-best.pth").is_file()

    shown = call_cli("visualize", "--checkpoint", checkpoint, str(band_folder / "test" / "frog"), "-o",
                     str(tmp_path / "vis"), "data.format=array", "--bands", "2", "1", "0")
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert len(list((tmp_path / "vis").glob("*.png"))) == 50
    wrong = call_cli("visualize", "--checkpoint", checkpoint, str(band_folder / "test" / "frog"), "-o",
                     str(tmp_path / "vis2"), "data.format=array", "--bands", "4")
    assert wrong.returncode == 1 and "each from 0 to 3 (the model has 4)" in wrong.stderr, wrong.stderr[-2000:]


def test_image_files_for_a_model_of_other_bands_say_to_read_arrays(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    proc = call_cli("pretrain", "--data", str(tmp_path), "-o", str(tmp_path / "run"),
                    "model.name=mae_vit_debug_patch4_32", "model.in_chans=4", "data.num_workers=0")
    assert proc.returncode != 0
    assert "the model takes 4 input channels (model.in_chans) and image files decode to 1 or 3; for files of 4 " \
           "bands set data.format=array" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("workers_decode", [False, True], ids=["device_decode", "workers_decode"])
def test_device_path_for_arrays_equals_the_cpu_path(band_folder, workers_decode):
    """data.device_augment with arrays: the workers read the bands and hand over their crop's floats, the device
    resizes (float bicubic, as the CPU path's crop does), flips and normalises: the CPU path's tensors, the same
    boxes and flips; the GPU's batched resize (run here on the CPU) within float rounding of it."""
    from openmae.data.loader import collate

    out, crops = [], None
    for device_augment in (False, True):
        cfg = array_config(band_folder, device_augment=device_augment, device_decode=not (device_augment and workers_decode))
        dataset, sampler = train_dataset(cfg, (24, 24), 4, batch_size=16, seed=3)
        items = [dataset[item] for item in list(sampler)[:16]]
        batch = collate(items)
        if device_augment:
            crops = [item[0] for item in items]
            assert all(c.image.data.dtype == np.float32 and c.image.data.shape == (4, c.height, c.width) for c in crops)
            assert batch.images.data.dtype == torch.float32  # one float buffer for the batch
            dataset.device_stage.batched_resize = True
            batched = dataset.to_device(batch, torch.device("cpu")).images
            dataset.device_stage.batched_resize = False
        out.append(dataset.to_device(batch, torch.device("cpu")).images)
    cpu, device = out
    assert device.shape == cpu.shape == (16, 4, 24, 24)
    assert torch.equal(device, cpu)  # the crop, then the same float resize
    assert torch.allclose(batched, cpu, atol=1e-4), (batched - cpu).abs().max()  # 2e-6 measured
    assert any(c.flip for c in crops) and not all(c.flip for c in crops)


def test_npy_and_uncompressed_tiff_files_are_memory_mapped_for_the_crops(tmp_path):
    from openmae.data.arrays import open_array
    from openmae.data.tiles import TiledBands

    hwc = np.arange(3 * 8 * 6, dtype=np.uint16).reshape(8, 6, 3)
    np.save(tmp_path / "tile.npy", hwc)
    plain = dict(photometric="minisblack")
    tifffile.imwrite(tmp_path / "contig.tif", hwc, planarconfig="contig", **plain)
    tifffile.imwrite(tmp_path / "planar.tif", hwc.transpose(2, 0, 1), planarconfig="separate", **plain)
    tifffile.imwrite(tmp_path / "big_endian.tif", hwc, planarconfig="contig", byteorder=">", **plain)
    tifffile.imwrite(tmp_path / "float.tif", hwc.astype(np.float32), planarconfig="contig", **plain)
    tifffile.imwrite(tmp_path / "deflate.tif", hwc, planarconfig="contig", compression="zlib", **plain)
    tifffile.imwrite(tmp_path / "tiled.tif", hwc, planarconfig="contig", tile=(16, 16), **plain)
    expected = hwc.transpose(2, 0, 1)
    for name, mapped in (("tile.npy", True), ("contig.tif", True), ("planar.tif", True), ("big_endian.tif", True),
                         ("float.tif", True), ("deflate.tif", False), ("tiled.tif", False)):
        view = open_array(tmp_path / name, 3, mapped=True)
        # mapped: nothing read until a crop is cut out; compressed or tiled TIFFs: the tiles (strips) a crop covers
        assert isinstance(view, TiledBands) != mapped, name
        assert mapped == (isinstance(view, np.memmap) or isinstance(getattr(view, "base", None), np.memmap)), name
        assert view.shape == (3, 8, 6) and np.array_equal(view[:, 2:4, 1:3], expected[:, 2:4, 1:3]), name
        assert np.array_equal(np.asarray(view), open_array(tmp_path / name, 3)), name  # as read unmapped
    np.save(tmp_path / "nodata.npy", np.where(np.eye(8)[None] > 0, np.nan, 1.0).repeat(3, 0))
    with pytest.raises(BadImageError, match="holds NaN or infinite values \\(24 of 192\\)"):
        open_array(tmp_path / "nodata.npy", 3, mapped=True)  # a float file is checked whole, as on the CPU path


def tiff_layouts(hwc: np.ndarray) -> dict[str, tuple[np.ndarray, dict]]:
    """``hwc`` as each stored layout tifffile writes for a compressed scene: what to write and how."""
    deflate = dict(photometric="minisblack", compression="zlib")
    return {
        "interleaved tiles": (hwc, dict(deflate, planarconfig="contig", tile=(32, 48), predictor=True)),
        "a plane of tiles a band": (hwc.transpose(2, 0, 1), dict(deflate, planarconfig="separate", tile=(32, 32))),
        "a page a band": (hwc.transpose(2, 0, 1)[:, None], dict(deflate, tile=(16, 32), metadata=None)),
        "strips": (hwc, dict(deflate, planarconfig="contig", rowsperstrip=5)),
        "big-endian float tiles": (hwc.astype(np.float32), dict(deflate, planarconfig="contig", tile=(16, 16),
                                                                 byteorder=">")),
        "LZW tiles (imagecodecs)": (hwc, dict(deflate, planarconfig="contig", tile=(32, 32), compression="lzw")),
        "one band": (hwc[..., 0], dict(deflate, tile=(32, 32))),
    }


def test_compressed_tiffs_decode_only_the_tiles_a_window_covers(tmp_path):
    """A compressed TIFF in tiles or strips, every layout: any window equals the whole file's decode at that place;
    a tile the window does not cover is not decoded (a corrupt one there goes unnoticed, one inside is reported);
    a float file's NaN are found in the windows that hold them; a codec tifffile lacks is a setup error."""
    from openmae.data.arrays import open_array
    from openmae.data.tiles import TiledBands

    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 60000, (70, 100, 3)).astype(np.uint16)  # 70 x 100: tiles of 16 and 32 overhang both edges
    windows = [(0, 70, 0, 100), (3, 9, 31, 33), (40, 70, 90, 100), (16, 32, 0, 1), (69, 70, 99, 100), (5, 5, 0, 10)]
    for layout, (data, options) in tiff_layouts(hwc).items():
        bands = 1 if data.ndim == 2 else 3
        tifffile.imwrite(tmp_path / "scene.tif", data, **options)
        view, whole = open_array(tmp_path / "scene.tif", bands, mapped=True), open_array(tmp_path / "scene.tif", bands)
        assert isinstance(view, TiledBands) and view.shape == whole.shape == (bands, 70, 100), layout
        for r0, r1, c0, c1 in windows:
            got = view[:, r0:r1, c0:c1]
            assert got.dtype == whole.dtype and np.array_equal(got, whole[:, r0:r1, c0:c1]), (layout, r0, c0)

    tifffile.imwrite(tmp_path / "scene.tif", hwc, photometric="minisblack", planarconfig="contig", tile=(32, 32),
                     compression="zlib")
    with tifffile.TiffFile(tmp_path / "scene.tif") as tif:  # tiles 3 x 4; the last one (rows 64-95, columns 96-127)
        offset, count = tif.pages[0].dataoffsets[-1], tif.pages[0].databytecounts[-1]
    with open(tmp_path / "scene.tif", "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xff" * count)
    view = open_array(tmp_path / "scene.tif", 3, mapped=True)
    assert np.array_equal(view[:, 0:64, 0:96], hwc.transpose(2, 0, 1)[:, 0:64, 0:96])  # the corrupt tile not read
    with pytest.raises(BadImageError, match="scene.tif: .* decoding its tiles"):
        view[:, 60:70, 90:100]
    with pytest.raises(BadImageError, match="scene.tif"):
        open_array(tmp_path / "scene.tif", 3)  # read whole

    nodata = hwc.astype(np.float32)
    nodata[50:52, 10:13] = np.nan
    tifffile.imwrite(tmp_path / "nodata.tif", nodata, photometric="minisblack", planarconfig="contig", tile=(16, 16),
                     compression="zlib")
    view = open_array(tmp_path / "nodata.tif", 3, mapped=True)  # not decoded whole to look for NaN
    assert np.array_equal(view[:, 0:48, :], nodata.transpose(2, 0, 1)[:, 0:48])
    with pytest.raises(BadImageError, match="nodata.tif: holds NaN or infinite values \\(18 of 1200\\)"):
        view[:, 40:60, 0:20]

    tifffile.imwrite(tmp_path / "lzw.tif", hwc, photometric="minisblack", tile=(32, 32), compression="lzw")
    script = ("import sys; sys.modules['imagecodecs'] = None\n"  # as where imagecodecs is not installed
              "from openmae.data.arrays import open_array\n"
              f"open_array({str(tmp_path / 'lzw.tif')!r}, 3, mapped=True)[:, 0:8, 0:8]")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 1 and "ImportError: " in proc.stderr and "LZW" in proc.stderr, proc.stderr[-2000:]
    assert "pip install imagecodecs (or openmae[geo])" in proc.stderr


def test_training_crops_read_only_their_part_and_equal_the_whole_arrays_crops(band_folder):
    """The CPU path's training transform on arrays reads a memory-mapped .npy file and converts only its crop: the
    same tensors as the plain transform on the whole array (same draws, crop then resize), for pretraining's crop and
    fine-tuning's recipe for arrays."""
    from openmae.data.arrays import MappedCrop
    from openmae.data.loader import SeededSamples
    from openmae.data.transforms import pretrain_transform

    cfg = array_config(band_folder, mean=(30000.0,) * 4, std=(15000.0,) * 4)
    for plain in (pretrain_transform(cfg, (24, 24), cfg.mean, cfg.std),
                  finetune_transform(cfg, (24, 24), cfg.mean, cfg.std, "", 0.5, shift=2)):
        dataset, _ = train_dataset(cfg, (24, 24), 4, 8, seed=0, transform=plain)
        assert isinstance(dataset.transform, MappedCrop)
        whole = SeededSamples(dataset.source, plain)  # reads each file whole
        for index in range(0, 300, 23):
            assert torch.equal(dataset[(index, 77 + index)][0], whole[(index, 77 + index)][0]), index


def test_pictures_show_the_bands_asked_for():
    from openmae.eval.reconstruction import Reconstruction, grid_image

    bands = torch.arange(5.0).view(1, 5, 1, 1).expand(1, 5, 4, 4) / 4  # band b is the constant b / 4
    rec = Reconstruction(bands, bands, bands, bands, torch.zeros(1, 1))
    first = grid_image(rec)[0, 0]  # top-left pixel of the original panel, (R, G, B)
    assert first.tolist() == [0, 64, 128]  # the first three bands by default
    assert grid_image(rec, bands=(3, 2, 1))[0, 0].tolist() == [191, 128, 64]  # e.g. Sentinel-2's true colour
    assert grid_image(rec, bands=(4,))[0, 0].tolist() == [255, 255, 255]  # one band in grey
    two = Reconstruction(bands[:, :2], bands[:, :2], bands[:, :2], bands[:, :2], torch.zeros(1, 1))
    assert grid_image(two)[0, 0].tolist() == [0, 0, 0]  # fewer than three: the first in grey
    for wrong in ((1, 2), (0, 1, 5)):
        with pytest.raises(ValueError, match="give one band \\(grey\\) or three .* each from 0 to 4"):
            grid_image(rec, bands=wrong)
