"""``data.device_augment``: workers read and plan the crops, the training device decodes and augments.
Same crop boxes and flips as the CPU path, pixels equal up to the resampler, training end to end."""

import numpy as np
import pytest
import torch
from helpers import tiny_pretrain, weights

from openmae.config import ConfigError, load_config
from openmae.data.ahead import DeviceAhead
from openmae.data.build import train_dataset
from openmae.data.config import DataConfig
from openmae.data.device import PlannedCrop
from openmae.data.loader import collate
from openmae.engine.finetune import FinetuneConfig
from openmae.engine.pretrain import pretrain

CASES = [  # dataset settings, image size, channels
    ({"name": "cifar10"}, (32, 32), 3),  # JPEG files: decoded by decode_jpeg
    ({"name": "fashion-mnist"}, (28, 28), 1),  # in-memory arrays: decoded on the CPU, augmented on the device
    ({"name": "folder", "path": "imagenet-sample"}, (96, 96), 3),  # photos of every size
]


def both_paths(datasets, settings, size, channels, count=24, device_decode=True):
    settings = {**settings, "path": str(datasets / settings["path"])} if "path" in settings else settings
    out = []
    for device_augment in (False, True):
        cfg = DataConfig(root=str(datasets), device_augment=device_augment, max_samples=200, **settings,
                         device_decode=device_decode or not device_augment)
        dataset, sampler = train_dataset(cfg, size, channels, batch_size=count, seed=3)
        batch = collate([dataset[item] for item in list(sampler)[:count]])
        out.append((dataset, dataset.to_device(batch, torch.device("cpu"))))
    return out


@pytest.mark.parametrize("device_decode", [True, False], ids=["device decodes", "workers decode"])
@pytest.mark.parametrize("settings, size, channels", CASES, ids=[c[0]["name"] for c in CASES])
def test_device_path_equals_cpu_path(datasets, settings, size, channels, device_decode):
    (_, cpu), (dataset, dev) = both_paths(datasets, settings, size, channels, device_decode=device_decode)
    assert dev.images.shape == cpu.images.shape == (24, channels, *size) and dev.images.dtype == torch.float32
    assert torch.equal(dev.labels, cpu.labels) and torch.equal(dev.seeds, cpu.seeds)
    # the same crops and flips: a wrong box or a missed flip moves whole structures (errors ~1 in normalised units)
    diff = (dev.images - cpu.images).abs()
    assert diff.mean() < 0.03, diff.mean()
    per_image = diff.flatten(1).mean(1)
    assert per_image.max() < 0.08, per_image  # PIL's and torch's bicubic differ by a few grey levels only
    items = [dataset[item][0] for item in list(dataset_items(dataset))[:4]]
    assert all(isinstance(x, PlannedCrop) for x in items)
    if settings["name"] == "cifar10" and device_decode:
        assert all(x.image.encoded for x in items)  # JPEGs stay encoded
    if not device_decode:  # decoded by the worker, which hands over its crop's pixels only
        assert not any(x.image.encoded for x in items)
        assert all(x.image.data.shape == (channels, x.height, x.width) and (x.top, x.left) == (0, 0) for x in items)


def dataset_items(dataset):
    return [(i, 1000 + i) for i in range(len(dataset))]


def test_device_augment_trains_and_does_not_depend_on_workers(tmp_path, datasets, monkeypatch):
    """0 workers: the device stage in line; 2 workers: in a thread, a batch ahead (DeviceAhead). Same weights."""
    from openmae.engine import loop

    threads = []
    monkeypatch.setattr(loop, "DeviceAhead", lambda *a, **k: threads.append(1) or DeviceAhead(*a, **k))
    pretrain(tiny_pretrain(tmp_path / "w0", datasets, "data.device_augment=true"))
    assert not threads
    pretrain(tiny_pretrain(tmp_path / "w2", datasets, "data.device_augment=true", "data.num_workers=2"))
    assert threads == [1]
    pretrain(tiny_pretrain(tmp_path / "w2l", datasets, "data.device_augment=true", "data.num_workers=2",
                           "data.device_ahead=false"))
    assert threads == [1]  # in line
    a, b, c = weights(tmp_path / "w0"), weights(tmp_path / "w2"), weights(tmp_path / "w2l")
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) for k in a)
    losses = [line for line in (tmp_path / "w0" / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert losses and "NaN" not in "".join(losses)
    # the workers decoding instead (data.device_decode=false), with workers: trains too
    pretrain(tiny_pretrain(tmp_path / "wd", datasets, "data.device_augment=true", "data.device_decode=false",
                           "data.num_workers=2"))
    losses = [line for line in (tmp_path / "wd" / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(losses) == 12 and "NaN" not in "".join(losses)


@pytest.mark.parametrize("channels", [3, 1])
def test_torchcodec_decodes_the_device_paths_photos_as_torchvision_does(datasets, channels):
    """data.jpeg_decoder=torchcodec (torchvision deprecates its image decoding since 0.29): the device path's batch of
    ImageNet-sample photos of every size, through TorchCodec's decode_jpeg, equals torchvision's exactly."""
    import torchcodec.decoders
    import torchvision.io

    batches = {}
    for decoder in ("torchvision", "torchcodec"):
        cfg = DataConfig(name="folder", path=str(datasets / "imagenet-sample"), device_augment=True, max_samples=64,
                         jpeg_decoder=decoder)
        dataset, sampler = train_dataset(cfg, (64, 64), channels, batch_size=32, seed=5)
        used = {"torchvision": torchvision.io.decode_jpeg, "torchcodec": torchcodec.decoders.decode_jpeg}[decoder]
        assert dataset.device_stage.decode_jpeg is used
        batch = collate([dataset[item] for item in list(sampler)[:32]])
        assert all(batch.images.encoded)  # all photos reach the decoder encoded
        batches[decoder] = dataset.to_device(batch, torch.device("cpu")).images
    assert batches["torchvision"].shape == (32, channels, 64, 64)
    assert torch.equal(batches["torchvision"], batches["torchcodec"])


def test_auto_jpeg_decoder_falls_back_to_torchcodec_and_says_what_is_missing(monkeypatch):
    import torchcodec.decoders

    from openmae.data import jpeg

    monkeypatch.setattr(jpeg, "_torchvision", lambda: None)  # a torchvision that has dropped decode_jpeg
    assert jpeg.jpeg_decoder("auto") is torchcodec.decoders.decode_jpeg
    with pytest.raises(ImportError, match="data.jpeg_decoder=torchvision, but this torchvision has no decode_jpeg .*"
                                          "set data.jpeg_decoder=torchcodec"):
        jpeg.jpeg_decoder("torchvision")
    monkeypatch.setattr(jpeg, "_torchcodec", lambda: None)
    with pytest.raises(ImportError, match="no JPEG decoder found .*pip install torchcodec"):
        jpeg.jpeg_decoder("auto")
    with pytest.raises(ImportError, match=r"data.jpeg_decoder=torchcodec, but TorchCodec is not installed .*"
                                          r"pip install torchcodec \(or openmae\[torchcodec\]\)$"):
        jpeg.jpeg_decoder("torchcodec")
    monkeypatch.undo()  # torchvision's decoder back, TorchCodec's still missing: the other choice is said
    monkeypatch.setattr(jpeg, "_torchcodec", lambda: None)
    with pytest.raises(ImportError, match="data.jpeg_decoder=torchcodec, but TorchCodec is not installed .*"
                                          "set data.jpeg_decoder=auto for torchvision's decoder"):
        jpeg.jpeg_decoder("torchcodec")
    with pytest.raises(ConfigError, match="data.jpeg_decoder='nvjpeg' is invalid: must be one of"):
        load_config(FinetuneConfig, overrides=["data.name=cifar10", "data.jpeg_decoder=nvjpeg"])


def test_device_decode_needs_the_device_path():
    with pytest.raises(ConfigError, match="data.device_decode=False is invalid"):
        load_config(FinetuneConfig, overrides=["data.name=cifar10", "data.device_decode=false"])
    with pytest.raises(ConfigError, match="data.device_ahead=False is invalid"):
        load_config(FinetuneConfig, overrides=["data.name=cifar10", "data.device_ahead=false"])


def test_device_augment_is_refused_for_finetuning():
    with pytest.raises(ConfigError, match="data.device_augment=True is invalid"):
        load_config(FinetuneConfig, overrides=["data.name=cifar10", "data.device_augment=true"])


def test_corrupt_jpeg_body_stops_with_the_file_name(tmp_path, datasets):
    """The header reads (so the worker plans a crop), the body does not decode: the device names the file."""
    import shutil

    from openmae.data.images import BadImageError

    photos = sorted((datasets / "imagenet-sample").glob("*.JPEG"))[:4]
    for photo in photos:
        shutil.copy(photo, tmp_path / photo.name)
    broken = tmp_path / photos[0].name
    broken.write_bytes(broken.read_bytes()[:6000])  # header intact, scan data cut off
    cfg = DataConfig(name="folder", path=str(tmp_path), device_augment=True)
    dataset, sampler = train_dataset(cfg, (64, 64), 3, batch_size=4, seed=0)
    batch = collate([dataset[item] for item in sampler])
    with pytest.raises(BadImageError, match=broken.name + ".*data.device_augment=false"):
        dataset.to_device(batch, torch.device("cpu"))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_on_the_device_path(tmp_path, orientation):
    """A phone photo's EXIF orientation turns it upright on both paths (torchvision's CUDA decoder ignores the
    tag, so the device path applies it itself: checked here against the CPU decoder that honours it)."""
    from PIL import Image
    from torchvision.io import decode_jpeg

    from openmae.data.device import orient

    yy, xx = torch.meshgrid(torch.arange(48), torch.arange(80), indexing="ij")  # no symmetry: any turn shows
    rgb = torch.stack([xx * 3, yy * 5, (xx * yy) % 251]).clamp(0, 255).to(torch.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photos" / "phone.jpg"
    path.parent.mkdir()
    Image.fromarray(rgb.permute(1, 2, 0).numpy()).save(path, quality=95, exif=exif)
    data = torch.from_numpy(np.fromfile(path, dtype=np.uint8))
    assert torch.equal(orient(decode_jpeg(data), orientation), decode_jpeg(data, apply_exif_orientation=True))

    # the whole pipeline: the device path's crops of the upright photo equal the CPU path's (PIL exif_transpose)
    cfg = {"name": "folder", "path": str(path.parent)}
    out = []
    for device_augment in (False, True):
        dataset, sampler = train_dataset(DataConfig(device_augment=device_augment, repeat=6, **cfg), (32, 32), 3, 6, seed=1)
        out.append(dataset.to_device(collate([dataset[item] for item in sampler]), torch.device("cpu")).images)
    assert (out[0] - out[1]).abs().mean() < 0.03


def test_batched_resize_equals_per_image_resize_on_photos(datasets):
    """The GPU's batched resize (run here on the CPU) gives the per-image path's pixels on real photos of every
    size: a grey level apart at most in 99% of the pixels, a few at the edges of sharp detail, because the
    per-image path's uint8 resize on a CPU rounds its weights to fixed point (the float resize it replaces on a
    GPU is matched to the rounding in tests/test_resize.py); a wrong box or flip would move tens of levels."""
    cfg = DataConfig(name="folder", path=str(datasets / "imagenet-sample"), device_augment=True, max_samples=64)
    dataset, sampler = train_dataset(cfg, (96, 96), 3, batch_size=24, seed=5)
    batch = collate([dataset[item] for item in list(sampler)[:24]])
    stage = dataset.device_stage
    out = {}
    for batched in (False, True):
        stage.batched_resize = batched
        out[batched] = stage(batch.images, torch.device("cpu"))
    levels = (out[True] - out[False]).abs() * stage.std * 255  # in grey levels
    assert levels.mean() < 0.25 and levels.max() < 10
    assert torch.quantile(levels.flatten()[::7], 0.99) <= 1.001


def test_a_planned_batch_crosses_to_the_training_process_as_one_block(datasets):
    """Workers hand a device-path batch over as one shared-memory buffer: its pickle is small whatever the photos
    weigh, and every image's bytes come back intact."""
    from multiprocessing.reduction import ForkingPickler

    from openmae.data.device import PlannedBatch

    cfg = DataConfig(name="folder", path=str(datasets / "imagenet-sample"), device_augment=True, max_samples=32)
    dataset, sampler = train_dataset(cfg, (64, 64), 3, batch_size=16, seed=0)
    items = [dataset[item] for item in list(sampler)[:16]]
    batch = collate(items).images
    assert isinstance(batch, PlannedBatch) and len(batch) == 16
    for i, (crop, *_) in enumerate(items):
        assert np.array_equal(batch.image(i).numpy(), crop.image.data)
        assert (batch.boxes[i], batch.flips[i]) == ((crop.top, crop.left, crop.height, crop.width), crop.flip)
    photos = batch.data.numel()
    assert photos > 500_000 and len(ForkingPickler.dumps(batch)) < 20_000


def test_loader_benchmark_splits_the_time_and_profiles_the_device_stage(datasets):
    """``benchmarks/loader.py``: images/s with the training process's time split into waiting for workers and the
    device stage, the resize chosen on the command line, and a profile of the device stage."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, str(repo / "benchmarks" / "loader.py"), "--data", str(datasets / "imagenet-sample"),
                          "--workers", "0", "--images", "48", "--batch", "16", "--size", "64", "--device-augment",
                          "--resize", "batched", "--profile", "1"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "## device stage of 1 batches" in run.stdout and "aten::bmm" in run.stdout  # the batched resize ran
    row = json.loads(run.stdout.strip().splitlines()[-1])["rows"][0]
    assert row["resize"] == "batched" and row["images"] == 16  # the batch left after the start and the profile
    assert row["wait_ms_per_batch"] >= 0 and row["device_stage_ms_per_batch"] > 0 and row["images_per_s"] > 0


def test_device_stage_benchmark_times_receiving_and_resize_dispatch(datasets):
    """``benchmarks/device_stage.py``: receiving a device-path batch as a list and as one PlannedBatch, and the
    host time of the three resizes."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, str(repo / "benchmarks" / "device_stage.py"), "--data",
                          str(datasets / "imagenet-sample"), "--images", "16", "--repeats", "3", "--rounds", "1",
                          "--pause", "0.05"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert rows[0]["part"] == "resize dispatch" and set(rows[0]["ms"]) == {
        "torchvision_per_crop", "off_cpu_sequence_per_crop", "batched"} and min(rows[0]["ms"].values()) > 0
    assert rows[1]["part"] == "decode in threads" and set(rows[1]["ms"]) == {"one_after_the_other", "two_threads"}
    assert [r["form"] for r in rows[2:]] == ["list of planned crops", "one PlannedBatch"]
    assert all(r["images"] == 16 and r["megabytes"] > 0.5 and r["receive_ms_median"] > 0 for r in rows[2:])


def test_progressive_jpegs_are_decoded_by_the_workers(tmp_path):
    """Baseline JPEGs stay encoded for the device's batched decoder; a progressive one, which nvJPEG would decode
    alone on the training process's CPU, is decoded by the worker, and both give the CPU path's crops."""
    from PIL import Image

    from openmae.data.device import read_raw

    yy, xx = np.meshgrid(np.arange(60), np.arange(90), indexing="ij")
    rgb = np.stack([xx * 2, yy * 4, (xx * yy) % 251], -1).astype(np.uint8)
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(rgb).save(folder / "baseline.jpg", quality=95)
    Image.fromarray(rgb).save(folder / "progressive.jpg", quality=95, progressive=True)
    cfg = {"name": "folder", "path": str(folder)}
    dataset, _ = train_dataset(DataConfig(device_augment=True, **cfg), (32, 32), 3, 2, seed=0)
    raws = {dataset.source.describe(i).rsplit("/", 1)[-1]: read_raw(dataset.source, i)[0] for i in range(2)}
    assert raws["baseline.jpg"].encoded and not raws["progressive.jpg"].encoded
    assert raws["progressive.jpg"].data.shape == (3, 60, 90)
    out = []
    for device_augment in (False, True):
        dataset, sampler = train_dataset(DataConfig(device_augment=device_augment, repeat=4, **cfg), (32, 32), 3, 8, seed=1)
        out.append(dataset.to_device(collate([dataset[item] for item in sampler]), torch.device("cpu")).images)
    assert (out[0] - out[1]).abs().mean() < 0.03
