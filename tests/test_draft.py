"""The CPU path's reduced-scale JPEG decoding (data.jpeg_draft, openmae.data.draft.DraftCrop)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import openmae.data.device as device
import openmae.data.draft as draft
from openmae.data.build import eval_batches, train_dataset
from openmae.data.config import DataConfig
from openmae.data.draft import DraftCrop, reduction
from openmae.data.images import BadImageError
from openmae.data.loader import SeededSamples, collate


def test_reduction_keeps_twice_the_output_each_way():
    assert reduction(895, 2000, (224, 224)) == 1  # 895 / 2 < 2 * 224
    assert reduction(896, 896, (224, 224)) == 2
    assert reduction(1791, 5000, (224, 224)) == 2
    assert reduction(1792, 1792, (224, 224)) == 4
    assert reduction(3584, 3584, (224, 224)) == 8
    assert reduction(9000, 9000, (224, 224)) == 8  # libjpeg scales by 1/8 at most
    assert reduction(400, 1000, (112, 224)) == 1  # each side against its own output side
    assert reduction(400, 1000, (112, 224), gap=1.0) == 2
    assert reduction(450, 900, (112, 224)) == 2


def _spy(monkeypatch) -> list[tuple[int, tuple[int, int]]]:
    """Record each decode's reduction and decoded size (decoded at once when read, or later at a reduced scale)."""
    calls = []
    real, real_or_header = draft.open_image, draft.open_image_or_header

    def spy(path, channels, reduce=1):
        img = real(path, channels, reduce)
        calls.append((reduce, img.size))
        return img

    def spy_or_header(path, channels, keep_encoded=None, reduce=1):
        out = real_or_header(path, channels, keep_encoded, reduce)
        if isinstance(out, Image.Image):
            calls.append((reduce, out.size))
        return out

    monkeypatch.setattr(draft, "open_image", spy)
    monkeypatch.setattr(draft, "open_image_or_header", spy_or_header)
    monkeypatch.setattr(device, "open_image", spy)
    return calls


def _images(cfg: DataConfig, size, channels=3, count=None, batch=8):
    dataset, _ = train_dataset(cfg, size, channels, batch_size=batch, seed=5)
    n = len(dataset) if count is None else count
    return dataset, torch.stack([dataset[(i, 100 + i)][0] for i in range(n)])


@pytest.mark.parametrize("name, path, size", [("cifar10", None, (32, 32)), ("folder", "imagenet-sample", (224, 224))],
                         ids=["cifar10", "photos"])
def test_unreduced_crops_are_pretrain_transforms_pixels(datasets, monkeypatch, name, path, size):
    calls = _spy(monkeypatch)
    settings = {"name": name, "root": str(datasets), "max_samples": 48}
    if path:
        settings["path"] = str(datasets / path)
    dataset, drafted = _images(DataConfig(**settings), size)
    assert isinstance(dataset.transform, DraftCrop) and len(calls) == 48
    plain_set, plain = _images(DataConfig(**settings, jpeg_draft=False), size)
    assert not isinstance(plain_set.transform, DraftCrop)
    reduced = torch.tensor([r > 1 for r, _ in calls])
    assert reduced.sum() <= 2  # these photos are small for 224px crops: nearly all decode at full size
    assert torch.equal(drafted[~reduced], plain[~reduced])  # the same boxes, flips and pixels


@pytest.fixture(scope="module")
def large_photos(datasets, tmp_path_factory):
    """Four ImageNet-sample photos enlarged six times (about 3000x2250 px, as from a camera), one of them with an
    EXIF rotation, one grayscale."""
    folder = tmp_path_factory.mktemp("large")
    photos = sorted((datasets / "imagenet-sample").glob("*.JPEG"))[:40:10]
    for i, src in enumerate(photos):
        img = Image.open(src).convert("RGB")
        img = img.resize((img.width * 6, img.height * 6), Image.Resampling.BICUBIC)
        exif = Image.Exif()
        if i == 1:
            exif[0x0112] = 6  # stored on its side: turned upright after decoding
        (img.convert("L") if i == 2 else img).save(folder / f"large{i}.jpg", quality=90, exif=exif)
    return folder


@pytest.mark.parametrize("channels", [3, 1])
def test_large_photos_decode_smaller_and_keep_their_pixels(large_photos, monkeypatch, channels):
    calls = _spy(monkeypatch)
    cfg = DataConfig(name="folder", path=str(large_photos), repeat=6)
    _, drafted = _images(cfg, (224, 224), channels)
    reduced = torch.tensor([r > 1 for r, _ in calls])
    assert len(calls) == 24 and reduced.sum() >= 16 and {2, 4} <= {r for r, _ in calls}
    assert all(max(size) <= 3600 // r + 1 for r, size in calls)  # decoded at the reduced size
    _, plain = _images(DataConfig(name="folder", path=str(large_photos), repeat=6, jpeg_draft=False), (224, 224), channels)
    assert torch.equal(drafted[~reduced], plain[~reduced])
    drafted, plain = drafted[reduced], plain[reduced]
    levels = (drafted - plain).abs() * 255 * 0.225  # normalised units back to grey levels (std ~0.225)
    # the same boxes and flips, pixels within the rounding: a wrong box, scale, rotation or flip moves whole
    # structures (tens of levels)
    assert levels.mean() < 0.5, levels.mean()
    assert levels.flatten(1).mean(1).max() < 1.5
    assert torch.quantile(levels.flatten()[::7], 0.99) <= 3.0  # measured: mean 0.22, worst image 0.37, 99% <= 1


def test_a_jpeg_that_fails_only_when_decoded_is_skipped_or_stops(large_photos, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    data = (large_photos / "large0.jpg").read_bytes()
    (folder / "a_cut.jpg").write_bytes(data[: len(data) // 2])  # its header reads, its body ends half way
    (folder / "b_whole.jpg").write_bytes(data)
    dataset, sampler = train_dataset(DataConfig(name="folder", path=str(folder)), (64, 64), 3, 2, seed=0)
    assert isinstance(dataset.transform, DraftCrop)
    image, _, _, skipped = dataset[(0, 7)]
    assert skipped == 1 and image.shape == (3, 64, 64)
    assert collate([dataset[item] for item in sampler]).skipped == 1
    with pytest.raises(BadImageError, match="a_cut.jpg"):  # (train_dataset would stop at its probe of the files)
        SeededSamples(dataset.source, dataset.transform, bad_files="fail")[(0, 7)]


def test_other_files_take_the_plain_steps(tmp_path, monkeypatch):
    calls = _spy(monkeypatch)
    rng = np.random.default_rng(0)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (900, 1200, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    (folder / "fake.jpg").write_bytes((folder / "p0.png").read_bytes())  # a PNG named .jpg
    _, drafted = _images(DataConfig(name="folder", path=str(folder)), (64, 64), batch=2)
    _, plain = _images(DataConfig(name="folder", path=str(folder), jpeg_draft=False), (64, 64), batch=2)
    assert torch.equal(drafted, plain) and all(r == 1 for r, _ in calls)  # the PNG named .jpg too: full size


@pytest.mark.parametrize("folder, size", [("large", (224, 224)), ("large", (64, 96)), ("photos", (224, 224))])
def test_evaluation_resize_decodes_large_photos_smaller(datasets, large_photos, monkeypatch, folder, size):
    calls = _spy(monkeypatch)
    path = large_photos if folder == "large" else datasets / "imagenet-sample"
    out = {}
    for jpeg_draft in (True, False):
        cfg = DataConfig(name="folder", path=str(path), jpeg_draft=jpeg_draft, num_workers=0)
        # the first 200 of the ImageNet sample's photos (about 20 of them large for the size) or the 4 large ones
        out[jpeg_draft] = torch.cat([b.images for b in eval_batches(cfg, "train", size, 3, 8, limit=200)])
    assert out[True].shape == out[False].shape == (len(calls), 3, *size)
    reduced = torch.tensor([r > 1 for r, _ in calls])
    # photos small for the size (most of the ImageNet sample's): decoded at full size, and the very same pixels
    assert torch.equal(out[True][~reduced], out[False][~reduced])
    assert reduced.all() if folder == "large" else 0 < reduced.sum() < len(reduced) / 2
    levels = (out[True] - out[False])[reduced].abs() * 255 * 0.225
    assert levels.mean() < 0.5, levels.mean()  # measured: 0.18-0.33
    assert levels.flatten(1).mean(1).max() < 1.5
    assert torch.quantile(levels.flatten()[::7], 0.99) <= 3.0


@pytest.mark.parametrize("recipe", ["crop", "randaugment"])
def test_finetuning_crop_decodes_large_photos_smaller(large_photos, monkeypatch, recipe):
    """timm's RandomResizedCropAndInterpolation draws its box itself (Python's random): the same box and the rest of
    the recipe (flip, RandAugment, random erasing) run as they are."""
    from openmae.data.transforms import finetune_transform

    calls = _spy(monkeypatch)
    cfg = DataConfig(name="folder", path=str(large_photos), repeat=6)
    augment, reprob = ("rand-m9-mstd0.5-inc1", 0.25) if recipe == "randaugment" else ("", 0.0)
    out = {}
    for jpeg_draft in (True, False):
        plain = finetune_transform(cfg, (224, 224), (0.5,) * 3, (0.25,) * 3, augment, reprob)
        dataset, _ = train_dataset(replace(cfg, jpeg_draft=jpeg_draft), (224, 224), 3, 8, seed=5, transform=plain)
        assert isinstance(dataset.transform, DraftCrop) == jpeg_draft
        out[jpeg_draft] = torch.stack([dataset[(i, 100 + i)][0] for i in range(len(dataset))])
    reduced = torch.tensor([r > 1 for r, _ in calls])
    assert reduced.sum() >= 16 and torch.equal(out[True][~reduced], out[False][~reduced])
    levels = (out[True] - out[False])[reduced].abs() * 255 * 0.25
    if recipe == "crop":
        assert levels.mean() < 0.5 and levels.flatten(1).mean(1).max() < 1.5, levels.mean()
    else:  # RandAugment's thresholds (solarize, posterize) can turn a level's difference into a large one
        assert levels.mean() < 2.0, levels.mean()


def test_workers_decoding_for_the_device_read_large_photos_smaller(large_photos, monkeypatch):
    """data.device_decode=false: the workers decode at the reduced scale and hand over that crop (the box rounded to
    whole pixels there); the device's resize then gives the CPU path's full-size result to within the rounding."""
    from openmae.data.device import PlannedCrop

    calls = _spy(monkeypatch)
    cfg = DataConfig(name="folder", path=str(large_photos), repeat=6)
    dataset, sampler = train_dataset(replace(cfg, device_augment=True, device_decode=False), (224, 224), 3, 24, seed=5)
    items = [dataset[item] for item in sampler]
    assert all(isinstance(x[0], PlannedCrop) for x in items)
    reduced = torch.tensor([r > 1 for r, _ in calls])
    assert len(calls) == 24 and reduced.sum() >= 16
    scales = [round(3600 / max(size)) for _, size in calls]
    crops = [x[0] for x in items]  # a reduced crop is about its scale smaller than its box at full size
    assert all(max(c.height, c.width) >= 2 * 224 for c in crops)
    on_device = dataset.to_device(collate(items), torch.device("cpu")).images
    full, _ = train_dataset(replace(cfg, jpeg_draft=False), (224, 224), 3, 24, seed=5)
    cpu = torch.stack([full[item][0] for item in sampler])
    levels = (on_device - cpu).abs() * 255 * 0.225
    # the same boxes and flips; rounding the box to the decoded scale moves it by up to half a pixel there
    assert levels[reduced].mean() < 2.0, levels[reduced].mean()
    assert levels.flatten(1).mean(1).max() < 4.0
    assert max(scales) > 1


def test_visualizing_a_large_photo_reads_it_smaller(large_photos, tmp_path, monkeypatch):
    import openmae
    from openmae.eval.visualize import visualize_files

    calls = _spy(monkeypatch)
    model = openmae.create_model("mae_vit_debug_patch4_32", img_size=64, patch_size=8)
    photo = large_photos / "large0.jpg"
    panels = {}
    for jpeg_draft in (True, False):
        data = DataConfig(name="folder", path=str(large_photos), jpeg_draft=jpeg_draft)
        (png,) = visualize_files(model, [photo], tmp_path / str(jpeg_draft), data, scale=1)
        panels[jpeg_draft] = np.asarray(Image.open(png))[:, :64].astype(float)  # the original panel
    assert calls == [(8, (375, 282))]  # 2250 px short side, resized to 64: decoded at 1/8
    assert np.abs(panels[True] - panels[False]).mean() < 0.5
