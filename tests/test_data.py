"""Data: every odd file gets a defined outcome; named datasets read from the data root; seeded sampling."""

import dataclasses
import logging
import shutil
import sys
import warnings

import numpy as np
import pytest
import torch
from helpers import tiny_pretrain, torchrun
from PIL import Image

from openmae.data.config import DataConfig
from openmae.data.datasets import build_source, read_idx
from openmae.data.images import BadImageError, open_image, read_header
from openmae.data.loader import ResumableSampler
from openmae.engine.pretrain import pretrain


def make_messy_folder(root, datasets, good=24):
    root.mkdir()
    photos = sorted((datasets / "imagenet-sample").glob("*.JPEG"))[: max(good, 2)]
    sub = root / "nested" / "deeper"
    sub.mkdir(parents=True)
    for i, p in enumerate(photos):
        shutil.copy(p, (sub if i % 2 else root) / p.name)
    rgb = Image.open(photos[0]).convert("RGB")
    data = photos[1].read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / "zero.jpg").write_bytes(b"")
    (root / "notes.png").write_text("this is not an image")
    (root / "garbage.webp").write_bytes(np.random.default_rng(0).bytes(5000))
    rgb.convert("L").save(root / "gray.png")
    rgb.convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).save(root / "sixteen.png")
    pal = rgb.resize((40, 30)).convert("P")
    pal.info["transparency"] = 0
    pal.save(root / "palette.png")
    rgb.resize((50, 40)).convert("RGBA").save(root / "rgba.png")
    rgb.resize((6, 5)).save(root / "tiny.bmp")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    rgb.resize((60, 30)).save(root / "rotated.jpg", exif=exif)
    return root


def test_every_odd_file_has_a_defined_outcome(tmp_path, datasets):
    root = make_messy_folder(tmp_path / "messy", datasets, good=1)
    for name in ("gray.png", "cmyk.jpg", "sixteen.png", "palette.png", "rgba.png", "tiny.bmp"):
        img = open_image(root / name, 3)
        assert img.mode == "RGB"
        assert open_image(root / name, 1).mode == "L"
    assert open_image(root / "rotated.jpg", 3).size == (30, 60)  # EXIF orientation applied
    sixteen = np.asarray(open_image(root / "sixteen.png", 1))
    assert sixteen.max() > 200 and sixteen.min() == 0  # 16-bit range scaled, not clipped to white
    assert np.asarray(open_image(root / "palette.png", 3)).shape == (30, 40, 3)
    for name in ("truncated.jpg", "zero.jpg", "notes.png", "garbage.webp"):
        with pytest.raises(BadImageError, match=name):
            open_image(root / name, 3)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    """Images over data.max_image_pixels (0: PIL's limit, twice its MAX_IMAGE_PIXELS) are refused as bad files, the
    message naming the setting; under it they read, also those PIL only warns about (a 108-MP camera's photo, once
    skipped as a bomb)."""
    from openmae.data.images import PIL_PIXEL_LIMIT, set_pixel_limit

    Image.new("RGB", (200, 200)).save(tmp_path / "big.png")  # 40,000 pixels
    Image.new("RGB", (200, 200)).save(tmp_path / "big.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", PIL_PIXEL_LIMIT)  # restored after the test
    set_pixel_limit(30_000)
    with pytest.raises(BadImageError, match=r"big.png: DecompressionBombError: .* If it is a genuine image, raise "
                                            r"data.max_image_pixels \(now 30,000\)"):
        open_image(tmp_path / "big.png", 3)
    # a JPEG's header alone (read first by data.jpeg_draft and data.device_augment) is refused the same way, as a
    # bad file, not a crash
    with pytest.raises(BadImageError, match="DecompressionBomb"):
        read_header(tmp_path / "big.jpg")
    set_pixel_limit(50_000)  # PIL's warning zone for its limit of 25,000, under twice it: read, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert open_image(tmp_path / "big.png", 3).size == (200, 200) and read_header(tmp_path / "big.jpg").width == 200
    set_pixel_limit(0)
    assert Image.MAX_IMAGE_PIXELS == PIL_PIXEL_LIMIT
    cfg = DataConfig(name="folder", path=str(tmp_path), max_image_pixels=30_000)
    build_source(cfg, "train", 3)  # the setting reaches the process (and the workers it forks)
    assert Image.MAX_IMAGE_PIXELS == 15_000


def test_phone_photos_heic_and_avif_read_upright(tmp_path, datasets, monkeypatch):
    """A HEIC photo as a phone writes it (pixels stored sideways, the turn recorded) and an AVIF read upright, within
    the codecs' loss of the photo; a folder of them is found and read; without pillow-heif a HEIC stops the run
    naming what to install."""
    import pillow_heif

    from openmae.data import images as images_module

    photo = Image.open(datasets / "imagenet-sample" / "n01440764_tench.JPEG").convert("RGB")  # 500x375
    stored = pillow_heif.from_pillow(photo.transpose(Image.Transpose.ROTATE_90))  # 375 wide, 500 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "turn 90 degrees clockwise to show"
    stored.save(tmp_path / "IMG_0001.HEIC", exif=exif.tobytes(), quality=95)
    photo.save(tmp_path / "IMG_0002.avif", quality=95)
    want = np.asarray(photo, dtype=np.float64)
    for name in ("IMG_0001.HEIC", "IMG_0002.avif"):
        got = np.asarray(open_image(tmp_path / name, 3), dtype=np.float64)
        assert got.shape == want.shape and np.abs(got - want).mean() < 3, name
        assert (read_header(tmp_path / name).width, read_header(tmp_path / name).height) == (500, 375)
    source = build_source(DataConfig(name="folder", path=str(tmp_path)), "train", 3)
    assert [source.describe(i).rsplit("/", 1)[-1] for i in range(len(source))] == ["IMG_0001.HEIC", "IMG_0002.avif"]
    images_module._register_heif.cache_clear()
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # as if not installed
    with pytest.raises(ImportError, match=r"IMG_0001.HEIC: HEIC / HEIF photos are read with pillow-heif; pip install"):
        open_image(tmp_path / "IMG_0001.HEIC", 3)


def test_messy_folder_trains_and_reports_skips(tmp_path, datasets, caplog):
    root = make_messy_folder(tmp_path / "messy", datasets)
    cfg = tiny_pretrain(tmp_path / "run", datasets, "data.name=folder", f"data.path={root}", "data.max_samples=0",
                        "train.batch_size=8", "train.epochs=1", "model.img_size=64")
    with caplog.at_level(logging.WARNING, logger="openmae.data"):
        out = pretrain(cfg)
    # each of the 4 bad files is met at least once an epoch (and again when it follows another bad one)
    assert out["skipped_files"] >= 4
    warned = {r.getMessage().split(": ")[0].rsplit("/", 1)[-1] for r in caplog.records}
    assert warned == {"truncated.jpg", "zero.jpg", "notes.png", "garbage.webp"}


def test_fail_policy_raises_on_bad_file(tmp_path, datasets):
    root = make_messy_folder(tmp_path / "messy", datasets, good=4)
    cfg = tiny_pretrain(tmp_path / "run", datasets, "data.name=folder", f"data.path={root}", "data.max_samples=0",
                        "train.batch_size=8", "train.epochs=1", "data.bad_files=fail", "model.img_size=64")
    with pytest.raises(BadImageError):
        pretrain(cfg)


def test_empty_and_all_bad_folders_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found in .*empty"):
        build_source(DataConfig(name="folder", path=str(tmp_path / "empty")), "train", 3)
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        (bad / f"{i}.jpg").write_bytes(b"nope")
    cfg = tiny_pretrain(tmp_path / "run", tmp_path, "data.name=folder", f"data.path={bad}", "data.max_samples=0")
    with pytest.raises(ValueError, match="the first 3 images could not be read"):
        pretrain(cfg)


def test_named_datasets_from_data_root(datasets):
    fm = build_source(DataConfig(name="fashion-mnist", root=str(datasets)), "train", 1)
    assert len(fm) == 60000
    img, label = fm.load(0)
    assert img.size == (28, 28) and img.mode == "L" and 0 <= label < 10
    assert len(build_source(DataConfig(name="fashion-mnist", root=str(datasets)), "test", 1)) == 10000
    cifar = build_source(DataConfig(name="cifar10", root=str(datasets)), "test", 3)
    assert len(cifar) == 10000 and cifar.classes[0] == "airplane"
    import torchvision.datasets as tvd  # the IDX files' class names, in label order, are torchvision's

    assert fm.classes == tvd.FashionMNIST.classes and fm.classes[9] == "Ankle boot"
    assert read_idx(datasets / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").shape == (10000,)


def test_holdout_splits_the_training_images_and_replaces_the_eval_split(datasets):
    """data.holdout: the held-out images are training images no training run reads, the same on every call,
    and they stand in for the evaluation split; the test split is not touched."""
    from openmae.data.build import holdout_indices, source_for

    cfg = DataConfig(name="fashion-mnist", root=str(datasets), holdout=0.1, holdout_seed=3)
    full = build_source(DataConfig(name="fashion-mnist", root=str(datasets)), "train", 1)
    kept, held = source_for(cfg, "train", 1), source_for(cfg, "test", 1)
    assert (len(kept), len(held)) == (54000, 6000)
    kept_index, held_index = kept.index.tolist(), held.index.tolist()  # int64 arrays (loader workers copy lists)
    assert sorted(kept_index + held_index) == list(range(60000))  # a partition of the training split
    assert held_index == source_for(cfg, "test", 1).index.tolist()  # fixed: the same images each time
    assert held_index != holdout_indices(60000, 0.1, 4)[1]  # ... drawn with holdout_seed
    assert held_index[:50] != list(range(50))  # a random subset, not the first images
    i = held_index[7]
    assert np.array_equal(np.asarray(held.load(7)[0]), np.asarray(full.load(i)[0])) and held.load(7)[1] == full.load(i)[1]
    assert len(source_for(cfg, "train", 1, limit=1000)) == 1000  # max_samples applies to the kept images
    with pytest.raises(ValueError, match="holds out 0; choose a fraction"):
        holdout_indices(5, 0.01, 0)


def test_class_folders_without_an_evaluation_folder_are_refused_unless_held_out(tmp_path):
    """`openmae knn/finetune/linprobe --data <class folders>`: --data means class folders for these commands (it was
    refused: "data.name='folder' is invalid"); a folder with no `test/` beside `train/` evaluated on the training
    images themselves (kNN finding each image itself), saying "evaluating on the 'test' split"."""
    from helpers import call_cli

    from openmae.data.build import split_sources
    from openmae.engine.pretrain import PretrainTask

    for name, colour in (("cat", (200, 30, 30)), ("dog", (30, 30, 200))):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (32, 32), tuple(c + 4 * i for c in colour)).save(tmp_path / "photos" / name / f"{i}.png")
    photos = str(tmp_path / "photos")
    with pytest.raises(ValueError, match=r"has no 'test/' folder \(data.eval_split\), so evaluation would read the "
                                         r"training images themselves; set data.holdout=0.1"):
        split_sources(DataConfig(name="imagefolder", path=photos), 3)
    train, held = split_sources(DataConfig(name="imagefolder", path=photos, holdout=0.25), 3)
    assert (len(train), len(held)) == (9, 3)
    with pytest.raises(ValueError, match="has no 'val/' folder"):
        split_sources(DataConfig(name="imagefolder", path=photos, eval_split="val"), 3)
    proc = call_cli("knn", "--data", photos, "model.name=mae_vit_debug_patch4_32", "data.num_workers=0")
    assert proc.returncode == 1 and "has no 'test/' folder" in proc.stderr, proc.stderr[-2000:]
    proc = call_cli("knn", "--data", photos, "model.name=mae_vit_debug_patch4_32", "data.num_workers=0",
                    "data.holdout=0.25", "knn.k=3")
    assert proc.returncode == 0 and '"eval_samples": 3' in proc.stdout, proc.stderr[-2000:]
    with pytest.raises(ValueError, match="has no 'test/' folder"):  # the kNN monitor: before the first epoch
        PretrainTask(tiny_pretrain(tmp_path / "run", tmp_path, "data.name=imagefolder", f"data.path={photos}",
                                   "pretrain.knn_every_epochs=1"))


def test_missing_named_dataset_says_where(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset 'mnist' .* not found under .*data.download=true"):
        build_source(DataConfig(name="mnist", root=str(tmp_path)), "train", 1)


def test_sampler_splits_global_batch_and_resumes():
    one = ResumableSampler(100, 8, seed=3, world_size=1)
    ranks = [ResumableSampler(100, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    one.set_position(2)
    for r in ranks:
        r.set_position(2)
    a = [i for i, _ in one]
    b0, b1 = [[i for i, _ in r] for r in ranks]
    for step in range(len(b0) // 4):  # step s of 2 ranks covers exactly step s of one process
        assert sorted(a[8 * step : 8 * step + 8]) == sorted(b0[4 * step : 4 * step + 4] + b1[4 * step : 4 * step + 4])
    one.set_position(2, start_batch=3)
    assert [i for i, _ in one] == a[24:]
    seeds = dict(ResumableSampler(100, 8, seed=3))
    assert len(set(seeds.values())) == len(seeds)  # one seed per sample
    with pytest.raises(ValueError, match="too small for batch 64 x 2"):
        ResumableSampler(100, 64, world_size=2)


def test_class_balanced_sampling_draws_every_class_alike_and_resumes_exactly(caplog):
    """data.balance=classes: an epoch of a 100:10:1 long tail draws its 1,110 items with replacement, the three
    classes about a third each; an item drawn twice gets two seeds (two crops); a mid-epoch start and two ranks draw
    the epoch's own items; images without labels are refused."""
    from openmae.data.loader import class_balanced

    labels = np.repeat([0, 1, 2], [1000, 100, 10])
    with caplog.at_level(logging.INFO, logger="openmae.data"):
        weights = class_balanced(labels, ["common", "middle", "rare"])
    assert "each epoch draws its 1110 images with replacement, the 3 classes alike: the rarest (rare, 10 images) " \
           "each about 37.0 times an epoch" in caplog.text
    s = ResumableSampler(1110, 10, seed=1, weights=weights)
    s.set_position(0)
    drawn = list(s)
    shares = np.bincount(labels[[i for i, _ in drawn]], minlength=3) / len(drawn)
    assert np.all(np.abs(shares - 1 / 3) < 0.05), shares  # unbalanced: 0.90 / 0.09 / 0.009
    assert len({seed for _, seed in drawn}) == len(drawn) > len({i for i, _ in drawn})  # repeats, each its own seed
    s.set_position(0, start_batch=40)
    assert list(s) == drawn[400:]
    ranks = [ResumableSampler(1110, 5, seed=1, rank=r, world_size=2, weights=weights) for r in range(2)]
    for r in ranks:
        r.set_position(0)
    halves = [list(r) for r in ranks]
    assert sorted(halves[0] + halves[1]) == sorted(drawn)
    s.set_position(1)
    assert list(s) != drawn  # each epoch its own draw
    with pytest.raises(ValueError, match="these images have no labels .* set data.balance=none"):
        class_balanced(np.full(10, -1))


def test_sampler_spanning_epochs_equals_the_epochs_one_by_one():
    """One iterator over several epochs (what the training loop uses, so the loader's workers run on across an
    epoch boundary) yields exactly the single epochs' (index, seed) pairs in turn, from a mid-epoch start,
    with a cap on the batches taken per epoch, and len() says how many."""
    s = ResumableSampler(100, 8, seed=5)  # 12 batches per epoch
    singles = []
    for epoch, start in ((3, 5), (4, 0), (5, 0)):
        s.set_position(epoch, start, batches=10)
        singles += list(s)
    s.set_position(3, 5, end_epoch=6, batches=10)
    assert list(s) == singles and len(s) == len(singles) == (5 + 10 + 10) * 8
    s.set_position(3, 5, end_epoch=6)
    assert len(s) == len(list(s)) == (7 + 12 + 12) * 8
    assert len({seed for _, seed in s}) == len(s)  # an index seen in two epochs gets two seeds
    with pytest.raises(ValueError, match="batches per epoch must be in \\[1, 12\\], got 13"):
        s.set_position(0, batches=13)
    keep = ResumableSampler(100, 8, shuffle=False, drop_last=False)
    with pytest.raises(ValueError, match="only run one epoch at a time"):
        keep.set_position(0, end_epoch=2)
    keep.set_position(0)
    assert len(keep) == len(list(keep)) == 100


def test_augmentation_depends_on_sample_seed_only(datasets):
    from openmae.data.build import train_dataset

    cfg = DataConfig(name="cifar10", root=str(datasets), max_samples=32)
    ds, sampler = train_dataset(cfg, (32, 32), 3, 8, seed=0)
    item = next(iter(sampler))
    torch.manual_seed(123)
    a = ds[item][0]
    torch.manual_seed(456)
    b = ds[item][0]
    assert torch.equal(a, b)
    other = ds[(item[0], item[1] + 1)][0]
    assert not torch.equal(a, other)


@pytest.mark.parametrize("recipe", ["pretrain", "finetune"])
def test_workers_give_the_batches_of_the_main_process(datasets, recipe):
    """A sample's augmentation depends on its seed alone, in a worker (seeded without saving any state) as in
    the training process (which gives the caller's random streams back untouched). The fine-tuning recipe's
    RandAugment draws from `random` and numpy as well as torch."""
    import random

    from openmae.data.build import train_dataset
    from openmae.data.loader import make_loader
    from openmae.data.transforms import finetune_transform

    cfg = DataConfig(name="fashion-mnist", root=str(datasets), max_samples=48)
    transform = finetune_transform(cfg, (28, 28), (0.5,), (0.5,), "rand-m9-mstd0.5-inc1", 0.25) \
        if recipe == "finetune" else None
    batches = {}
    for workers in (0, 2):
        dataset, sampler = train_dataset(cfg, (28, 28), 1, batch_size=8, seed=0, transform=transform)
        random.seed(1), np.random.seed(1), torch.manual_seed(1)
        streams = random.random(), np.random.rand(), torch.rand(1).item()
        random.seed(1), np.random.seed(1), torch.manual_seed(1)
        batches[workers] = [b.images for b in make_loader(dataset, sampler, workers, pin_memory=False)]
        # the training process's own streams are where they were (num_workers=0 augments in this process)
        assert (random.random(), np.random.rand(), torch.rand(1).item()) == streams
    assert len(batches[0]) == len(batches[2]) == 6
    for a, b in zip(batches[0], batches[2], strict=True):
        assert torch.equal(a, b)


def test_repeat_goes_over_each_image_several_times_with_its_own_seeds(datasets):
    from openmae.config import ConfigError
    from openmae.data.build import train_dataset

    cfg = DataConfig(name="fashion-mnist", root=str(datasets), max_samples=40, repeat=3)
    dataset, sampler = train_dataset(cfg, (28, 28), 1, batch_size=8, seed=0)
    assert len(dataset) == 120 and sampler.batches_per_epoch == 15
    labels = [dataset.source.load(i)[1] for i in range(120)]
    assert labels[:40] == labels[40:80] == labels[80:]  # the same 40 images, three times an epoch
    a, b = dataset[(0, 11)][0], dataset[(40, 12)][0]  # one image, two copies: each its own crop
    assert not torch.equal(a, b)
    with pytest.raises(ConfigError, match="data.repeat"):
        DataConfig(name="cifar10", repeat=0).check()


def test_paper_randaugment_survives_posterize_at_magnitude_10():
    """rand-m9-mstd0.5-inc1 now and then draws magnitude 10, i.e. posterize to 0 bits, which Pillow 13 refuses;
    the fine-tuning transform must give a black image there (older Pillow's answer) instead of crashing."""
    from timm.data.auto_augment import RandAugment

    from openmae.data.transforms import finetune_transform

    transform = finetune_transform(DataConfig(name="cifar10"), (32, 32), (0.5,) * 3, (0.5,) * 3, "rand-m9-mstd0.5-inc1", 0.0)
    ra = next(t for t in transform.transforms if isinstance(t, RandAugment))
    op = next(o for o in ra.ops if o.name == "PosterizeIncreasing")
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0
    img = Image.fromarray(np.full((32, 32, 3), 200, np.uint8))
    assert np.asarray(op(img)).max() == 0
    op.magnitude = 5  # 2 bits kept: 200 -> 192
    assert np.asarray(op(img)).max() == 192


def test_finetune_colour_jitter_only_when_asked():
    """Without RandAugment, timm's own default would brighten and darken every image (jitter 0.4); the recipe adds
    colour jitter only when finetune.color_jitter asks, so crop scale 1, no flip and no jitter leave the image as
    it is (normalised)."""
    from openmae.config import ConfigError
    from openmae.data.transforms import finetune_transform
    from openmae.engine.task_config import FinetuneSection

    cfg = DataConfig(name="fashion-mnist", crop_scale=(1.0, 1.0), hflip=0.0)
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    img = Image.fromarray(pixels)
    expected = (torch.from_numpy(pixels).float() / 255 - 0.5) / 0.5
    plain = finetune_transform(cfg, (28, 28), (0.5,), (0.5,), "", 0.0, 0.0)
    torch.manual_seed(0)
    assert all(torch.allclose(plain(img)[0], expected, atol=1e-6) for _ in range(5))
    jitter = finetune_transform(cfg, (28, 28), (0.5,), (0.5,), "", 0.0, 0.4)
    assert any(not torch.allclose(jitter(img)[0], expected, atol=1e-2) for _ in range(5))
    assert FinetuneSection().color_jitter == 0.0  # the official recipe: no jitter
    with pytest.raises(ConfigError, match="finetune.color_jitter"):
        FinetuneSection(color_jitter=-0.1).check()


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_to_normalized_tensor_equals_torchvision_steps(mode):
    from torchvision.transforms import v2 as T

    from openmae.data.transforms import ToNormalizedTensor

    channels = 1 if mode == "L" else 3
    mean, std = (0.2, 0.5, 0.7)[:channels], (0.3, 0.25, 0.4)[:channels]
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (20, 28, channels), dtype=np.uint8).squeeze(-1 if mode == "L" else ()))
    reference = T.Compose([T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)])(img)
    ours = ToNormalizedTensor(mean, std)(img)
    assert ours.shape == (channels, 20, 28) and ours.dtype == torch.float32
    assert torch.equal(ours, reference.as_subclass(torch.Tensor))


@pytest.mark.parametrize("mode", ["constant", "reflect"])
def test_finetune_shift_moves_whole_pixels_and_fills_the_border(mode):
    """finetune.shift=2: every training image is the input moved by whole pixels, at most 2 each way, the uncovered
    border black (constant) or mirrored (reflect); several draws give several shifts; 0 leaves the image alone."""
    from openmae.config import ConfigError
    from openmae.data.transforms import finetune_transform
    from openmae.engine.task_config import FinetuneSection

    cfg = DataConfig(name="fashion-mnist", crop_scale=(1.0, 1.0), hflip=0.0)
    pixels = np.random.default_rng(0).integers(1, 256, (28, 28), dtype=np.uint8)
    padded = np.pad(pixels, 2, mode=mode)  # constant pads with 0: black
    shifted = {(dy, dx): (torch.from_numpy(padded[2 + dy:30 + dy, 2 + dx:30 + dx].copy()).float() / 255 - 0.5) / 0.5
               for dy in range(-2, 3) for dx in range(-2, 3)}
    transform = finetune_transform(cfg, (28, 28), (0.5,), (0.5,), "", 0.0, 0.0, shift=2, shift_mode=mode)
    torch.manual_seed(0)
    seen = set()
    for _ in range(40):
        out = transform(Image.fromarray(pixels))[0]
        match = [k for k, v in shifted.items() if torch.allclose(out, v, atol=1e-6)]
        assert len(match) == 1, "not a whole-pixel shift of the input by at most 2"
        seen.add(match[0])
    assert len(seen) >= 10  # many of the 25 shifts drawn
    with pytest.raises(ValueError, match="finetune.shift=28"):
        finetune_transform(cfg, (28, 28), (0.5,), (0.5,), "", 0.0, 0.0, shift=28)
    with pytest.raises(ConfigError, match="finetune.shift"):
        FinetuneSection(shift=-1).check()
    with pytest.raises(ConfigError, match="finetune.shift_mode"):
        FinetuneSection(shift_mode="wrap").check()
    assert FinetuneSection().shift == 0  # the official recipe: no translation


def test_folder_scan_finds_what_rglob_finds_in_path_order(tmp_path):
    """find_images walks with os.scandir (no stat a file): the same files, in the same order, as the Path.rglob scan
    it replaced, on a tree with hidden entries, upper-case suffixes, a folder named like an image, links to a file,
    to nothing and to a folder (not followed below the root, as rglob), and names whose string order differs from
    their path order ("a b", "a-b" and "a/": a run resumed across the change keeps its files' order)."""
    import os
    from pathlib import Path

    from openmae.data.folders import find_images
    from openmae.data.images import IMAGE_SUFFIXES

    for rel in ("a/b.jpg", "a/x.JPG", "a-b/c.png", "a b/c.webp", ".hidden/h.jpg", "a/.h.jpg", "z/deep/er/f.jpeg",
                "top.jpg", "notes.txt", "dir.jpg/in.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    os.symlink(tmp_path / "a", tmp_path / "linked")
    os.symlink(tmp_path / "missing.jpg", tmp_path / "broken.jpg")
    os.symlink(tmp_path / "top.jpg", tmp_path / "alias.jpg")
    found = find_images(tmp_path)
    rglob = sorted(p for p in Path(tmp_path).rglob("*") if p.name.lower().endswith(IMAGE_SUFFIXES) and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(tmp_path).parts))
    assert found == rglob
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a/b.jpg", "a/x.JPG", "a b/c.webp", "a-b/c.png", "alias.jpg", "dir.jpg/in.png", "top.jpg", "z/deep/er/f.jpeg"]
    assert find_images(tmp_path / "linked") == [tmp_path / "linked" / "b.jpg", tmp_path / "linked" / "x.JPG"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_images(tmp_path / "nowhere")
    with pytest.raises(NotADirectoryError, match="top.jpg is a file; give the folder that holds the images"):
        find_images(tmp_path / "top.jpg")


def _private_mb() -> float:
    with open("/proc/self/smaps_rollup") as fh:
        return sum(int(line.split()[1]) for line in fh if line.startswith(("Private_Dirty", "Private_Clean"))) / 1024


class _ReadPaths(torch.utils.data.Dataset):
    """Item k: a loader worker reads the k-th eighth of ``files`` (as a dataset's items do); returns the worker's
    private memory growth in MB. Before the first eighth the worker interns and drops 3 million strings of its own:
    building a Path interns its parts (pathlib), which appends to the interpreter's table of interned strings, a
    table inherited from the parent (up to tens of MB in a test suite's process) whose pages are copied, whatever
    the list, until the table is resized into the worker's own memory; this makes that happen first, so that the
    eighths measure what reading ``files`` copies."""

    def __init__(self, files):
        self.files = files

    def __len__(self):
        return 8

    def __getitem__(self, k):
        if k == 0:
            for i in range(3_000_000):
                sys.intern(f"warm-up {i}")
        before, n = _private_mb(), len(self.files)
        read = self.files.file if hasattr(self.files, "file") else self.files.__getitem__  # a dataset's item's file
        for i in range(k * n // 8, (k + 1) * n // 8):
            read(i)
        return _private_mb() - before


def test_file_list_is_packed_and_loader_workers_read_it_without_copying():
    """A dataset's files are kept as one packed FileList (two numpy arrays, ~55 bytes a file here), not a list of
    Path objects (~340 bytes each, and a forked loader worker that reads one writes its reference count, copying its
    memory page): reading 240,000 paths in a worker copies ~90 bytes a path with a list and nothing with the packed
    list read through the items a data.holdout keeps (their indices an int64 array, not a list of ints), eighth by
    eighth (the median of the eighths: a rare resize of the interpreter's own tables is not the list's). The list
    behaves as a read-only list of the same paths: equality, slices, negative indices, pickling,
    names in any encoding."""
    import os
    import pickle
    from pathlib import Path

    from openmae.data.build import SourceView, holdout_indices
    from openmae.data.datasets import FileImages
    from openmae.data.filelist import FileList

    odd = Path(os.fsdecode(b"/data/caf\xe9.jpg"))  # not UTF-8: read back byte for byte
    some = [Path("/data/a/1.jpg"), Path("relative/b.png"), odd, Path("/data/ü/ñ.JPEG")]
    packed = FileList(some)
    assert packed == some and list(packed) == some and packed[-1] == some[-1] and packed[1:3] == some[1:3]
    assert pickle.loads(pickle.dumps(packed)) == packed and os.fsencode(packed[2]) == b"/data/caf\xe9.jpg"
    assert FileList.concat([packed[:1], FileList(), packed[1:]]) == packed and FileList.concat([]) == []
    assert packed != some[:3] and packed != [*some[:3], Path("/data/other.jpg")]
    with pytest.raises(IndexError):
        packed[4]

    n = 240_000
    names = [f"/data/train/n{c:08d}/n{c:08d}_{i}.JPEG" for c in range(100) for i in range(n // 100)]
    source = FileImages(names, np.arange(n) % 100, 3, [f"n{c:08d}" for c in range(100)])
    assert isinstance(source.files, FileList) and source.files.nbytes < 60 * n and source.labels.dtype == np.int64
    assert source.file(n - 1) == (Path(names[-1]), 99)
    view = SourceView(source, holdout_indices(n, 0.01, 0)[0])  # data.holdout's training items: an index a file
    assert view.file(0) == (Path(names[0]), 0) and len(view) == n - n // 100
    grown = {}
    for kind in ("packed", "list"):  # packed first: pathlib interns parts, so a Path built while a list of Paths
        files = view if kind == "packed" else [Path(name) for name in names]  # lives would share theirs
        loader = torch.utils.data.DataLoader(_ReadPaths(files), batch_size=None, num_workers=1,
                                             multiprocessing_context="fork")
        grown[kind] = float(np.median(list(loader)))
        del files, loader
    eighth = n // 8
    assert grown["list"] > 50 * eighth / 2**20, grown  # the measurement sees the pages a worker copies
    assert grown["packed"] < 2 * eighth / 2**20, grown  # the packed list: none (under 2 bytes a path)


SHARED_SCAN = """
import json, os, sys
from pathlib import Path
import torch.distributed as dist
from openmae.data import folders
from openmae.data.config import DataConfig
from openmae.data.datasets import build_source
from openmae.data.ranks import shared_by_ranks

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
root = Path(sys.argv[1])
listed = []
entries = folders._entries
def listing(folder, suffixes):
    listed.append(os.path.relpath(folder, root))
    if Path(folder).name == "locked":
        raise PermissionError(13, "Permission denied", folder)
    return entries(folder, suffixes)
folders._entries = listing
with shared_by_ranks(rank, world):
    classes = build_source(DataConfig(name="imagefolder", path=str(root / "classes")), "train", 3)
    marks = [len(listed)]
    found = folders.find_images(root / "mixed")
    marks.append(len(listed))
    try:
        folders.find_images(root / "broken")
        failed = ""
    except PermissionError as err:
        failed = str(err)
    marks.append(len(listed))
    try:
        folders.find_in([root / "classes" / f"c{rank}"], (".jpg",))  # as if each node held another copy
        differ = ""
    except RuntimeError as err:
        differ = str(err)
alone = folders.find_images(root / "mixed")  # outside the block: this process lists everything
parts = [listed[:marks[0]], listed[marks[0]:marks[1]], listed[marks[1]:marks[2]]]
(root / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "listed": parts, "classes": [str(p) for p in classes.files],
                  "labels": classes.labels.tolist(), "found": [str(p) for p in found], "failed": failed, "differ": differ,
                  "alone": alone == found}))  # a file each: the ranks' prints can share a line
dist.destroy_process_group()  # leaving it to the exit aborts a gloo process now and then (SIGABRT)
"""


def test_ranks_share_the_folder_scan_each_listing_its_part(tmp_path):
    """Under torchrun the ranks building the training data list every world-size-th class folder of an ImageFolder
    (and every world-size-th top-level subfolder of a data.path folder) and exchange the lists: each folder below the
    top is listed by one rank of two, both end with one process's files and labels in path order, and a folder that
    cannot be listed raises its error on both ranks (the one that did not list it is not left waiting), as do ranks
    asked for different folders."""
    import json

    from openmae.data.folders import find_images

    for rel in ("classes/c0/1.jpg", "classes/c0/2.jpg", "classes/c1/deep/3.png", "classes/c2/4.jpg",
                "classes/c3/5.jpg", "classes/c3/6.jpg", "classes/c4/7.jpg",
                "mixed/a.jpg", "mixed/b/x.jpg", "mixed/b/y/z.jpg", "mixed/b-c.jpg", "mixed/c/d.jpg", "mixed/e.jpg",
                "broken/a/v.jpg", "broken/locked/w.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    script = tmp_path / "shared_scan.py"
    script.write_text(SHARED_SCAN)
    proc = torchrun(str(script), str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    one = [str(p) for p in find_images(tmp_path / "classes")]
    assert ranks[0]["classes"] == ranks[1]["classes"] == one and ranks[0]["labels"] == [0, 0, 1, 2, 3, 3, 4]
    assert ranks[0]["found"] == ranks[1]["found"] == [str(p) for p in find_images(tmp_path / "mixed")]
    assert ranks[0]["alone"] and ranks[1]["alone"]
    classes, mixed, broken = zip(*(r["listed"] for r in ranks), strict=True)  # what each rank listed, scan by scan
    assert classes == (["classes/c0", "classes/c2", "classes/c4"], ["classes/c1", "classes/c1/deep", "classes/c3"])
    assert mixed == (["mixed", "mixed/b", "mixed/b/y"], ["mixed", "mixed/c"])  # the top level by both
    # broken/locked is rank 1's part: listing it fails there, and rank 0 raises the same error
    assert broken == (["broken", "broken/a"], ["broken", "broken/locked"])
    assert ranks[0]["failed"] == ranks[1]["failed"] == f"[Errno 13] Permission denied: '{tmp_path}/broken/locked'"
    # ranks asked for other folders (nodes whose copies of the data differ): both stop, saying so
    assert all("asked to list different folders" in r["differ"] and "every node must see the same data" in r["differ"]
               for r in ranks)


class _CollectInWorker(torch.utils.data.Dataset):
    """Item 0: a full garbage collection in the loader worker; returns the worker's private memory growth in MB."""

    def __len__(self):
        return 1

    def __getitem__(self, _):
        import gc

        before = _private_mb()
        gc.collect()
        return _private_mb() - before


def test_loader_workers_fork_with_the_parents_objects_out_of_the_collectors_reach():
    """A full garbage collection in a forked loader worker writes the collector's header of every object it tracks;
    the parent's (this test process: torch, the suite's modules) would be copied page by page into the worker. The
    loader forks its workers with them frozen (gc.freeze), so the worker's collection copies nothing of them; a plain
    DataLoader, the control, copies tens of MB. The parent's collector is unfrozen again after the fork."""
    import gc

    from openmae.data.loader import Loader

    grown = {}
    for kind, cls in (("plain", torch.utils.data.DataLoader), ("loader", Loader)):
        loader = cls(_CollectInWorker(), batch_size=None, num_workers=1, multiprocessing_context="fork")
        grown[kind] = next(iter(loader))
        del loader
    assert grown["plain"] > 20, grown  # the measurement sees the parent's objects copied by the collection
    assert grown["loader"] < 2, grown
    assert gc.get_freeze_count() == 0


def test_shared_map_in_one_process_keeps_order_catches_and_runs_on_threads():
    """Outside torchrun, ``shared_map`` is every item in order; an exception of a caught kind takes its item's place
    and any other propagates; with threads, two items run at once (each waits for the other at a barrier, which
    one thread at a time would never pass)."""
    import threading

    from openmae.data.ranks import shared_map

    def fn(i: int) -> int:
        if i == 2:
            raise BadImageError("item 2 is unreadable")
        return i * i

    out = shared_map(fn, 4, catch=(BadImageError,))
    assert out[:2] == [0, 1] and isinstance(out[2], BadImageError) and out[3] == 9
    with pytest.raises(BadImageError, match="item 2"):
        shared_map(fn, 4)
    barrier = threading.Barrier(2, timeout=10)
    assert shared_map(lambda i: barrier.wait() * 0 + i, 2, threads=2) == [0, 1]
    alone = threading.Barrier(2, timeout=0.2)  # one thread at a time: the first item waits alone, in vain
    with pytest.raises(threading.BrokenBarrierError):
        shared_map(lambda i: alone.wait(), 2, threads=1)


CUT_ON_ONE_RANK = """
import json, sys
from pathlib import Path
import torch.distributed as dist
from openmae.data.ranks import BuildStopped, cut_by, shared_by_ranks, shared_map

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
asked, done = [], []

def work(i):
    done.append(i)
    if rank == 1 and i == 3:
        asked.append("SIGTERM")  # rank 1 alone is asked to stop, at its second item
    return i * i

with shared_by_ranks(rank, world), cut_by(lambda: bool(asked)):
    try:
        outcome = shared_map(work, 10)
    except BuildStopped as err:
        outcome = str(err)
Path(sys.argv[1], f"rank{rank}.json").write_text(json.dumps({"done": done, "outcome": outcome}))
dist.destroy_process_group()
"""


def test_a_stop_on_one_rank_cuts_the_shared_work_and_every_rank_raises(tmp_path):
    """``cut_by``: the rank asked to stop skips the items it has left; after the exchange every rank raises
    BuildStopped (rank 0, never asked, too: a rank going on alone would wait for the other in the next exchange)."""
    import json

    script = tmp_path / "cut.py"
    script.write_text(CUT_ON_ONE_RANK)
    proc = torchrun(str(script), str(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["done"] == [0, 2, 4, 6, 8] and ranks[1]["done"] == [1, 3]
    assert ranks[0]["outcome"] == ranks[1]["outcome"] == "a stop was asked for: 3 of 10 items skipped"


def test_a_stop_in_one_process_cuts_the_shared_work():
    from openmae.data.ranks import BuildStopped, cut_by, shared_map

    done: list[int] = []
    with cut_by(lambda: len(done) >= 3), pytest.raises(BuildStopped, match="7 of 10 items skipped"):
        shared_map(done.append, 10)
    assert done == [0, 1, 2]
    assert shared_map(lambda i: i, 3) == [0, 1, 2]  # outside the block: nothing cut


def test_shared_map_spreads_long_work_over_forked_processes(monkeypatch, caplog):
    """``processes=True``: a rank computes its first items itself, timed; when the rest would take longer than
    ``POOL_AFTER_S`` it goes to forked processes (one a core of the node's share: LOCAL_WORLD_SIZE ranks divide the
    cores), results in item order, a caught exception in its item's place, any other raised here; when not, all
    in this process."""
    import os

    from openmae.data import ranks
    from openmae.data.ranks import shared_map

    def fn(i: int) -> tuple[int, int]:
        if i == 30:
            raise BadImageError("item 30 is unreadable")
        if i == 90:
            raise ValueError("item 90 is not a kind this caller catches")
        return i, os.getpid()

    monkeypatch.setattr(ranks, "pool_size", lambda: 2)  # two processes on any machine
    monkeypatch.setattr(ranks, "POOL_AFTER_S", 0.0)
    with caplog.at_level(logging.INFO, logger="openmae.data.ranks"):
        out = shared_map(fn, 80, catch=(BadImageError,), processes=True, what="the test's work")
    assert "the test's work: " in caplog.text and "64 more: 2 processes" in caplog.text
    assert [o[0] for o in out if not isinstance(o, BaseException)] == [i for i in range(80) if i != 30]
    assert isinstance(out[30], BadImageError) and str(out[30]) == "item 30 is unreadable"
    pids = [o[1] for o in out if not isinstance(o, BaseException)]
    assert set(pids[: ranks.POOL_PROBE]) == {os.getpid()} and os.getpid() not in pids[ranks.POOL_PROBE :]
    with pytest.raises(ValueError, match="item 90"):
        shared_map(fn, 100, catch=(BadImageError,), processes=True)
    monkeypatch.setattr(ranks, "POOL_AFTER_S", 60.0)  # a short part: no processes
    assert {o[1] for o in shared_map(fn, 30, processes=True)} == {os.getpid()}
    monkeypatch.undo()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert ranks.pool_size() == len(os.sched_getaffinity(0)) // 2


CTRL_C_IN_A_POOL = """
import logging, sys, time
from openmae.data import ranks

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
ranks.pool_size = lambda: 3  # three processes on any machine
ranks.POOL_AFTER_S = 0.0  # whatever the work's length
# 48 items after the 16 timed here, in chunks of 2: two processes each take a 30 s item, the third does the rest
# and waits for work
try:
    ranks.shared_map(lambda i: time.sleep(30 if i in (16, 18) else 0.01), 64, processes=True, what="the items")
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
"""


def test_ctrl_c_during_work_in_forked_processes_stops_it_at_once_without_their_tracebacks(tmp_path):
    """A terminal's Ctrl-C reaches the pool's processes too (a large DICOM folder's headers parsed at a run's
    start): one waiting for work printed a KeyboardInterrupt traceback of its own. Now the items in hand stop and
    the parent, interrupted, returns at once, with no process's traceback."""
    import os
    import signal
    import subprocess
    import time

    script = tmp_path / "pool.py"
    script.write_text(CTRL_C_IN_A_POOL)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert "the items: " in proc.stderr.readline()  # the first items timed: the processes take the rest
    time.sleep(2.0)  # the short items done: a process waits for work
    signalled = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal does: every process of the foreground group
    out, err = proc.communicate(timeout=60)
    waited = time.monotonic() - signalled
    assert proc.returncode == 130 and out == "interrupted\n", err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert waited < 10, f"the interrupted map ended {waited:.1f} s after Ctrl-C: it waited for the 30 s items"

def _item_equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if dataclasses.is_dataclass(a):  # the device path's undecoded images
        return type(a) is type(b) and _item_equal(vars(a), vars(b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_item_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_item_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_training_datasets_pickle_for_spawned_loader_workers(tmp_path, datasets):
    """macOS starts loader workers by spawning, and Python 3.14 on Linux by a fork server: the training dataset
    (source, augmentation, device-path plan) then reaches each worker pickled. Every kind pickles, and the copy
    gives the same sample for the same (index, seed) as the original."""
    import pickle

    from openmae.data.build import train_dataset
    from openmae.data.transforms import finetune_transform

    arrays = tmp_path / "arrays"
    arrays.mkdir()
    for k in range(3):
        np.save(arrays / f"{k}.npy", np.random.default_rng(k).random((4, 40, 40), dtype=np.float32))
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    for k in range(2):
        np.save(stacks / f"{k}.npy", np.random.default_rng(k).integers(0, 255, (5, 36, 36), dtype=np.uint8))
    photos = str(datasets / "imagenet-sample")
    cases = {  # name -> (config, image size, channels, fine-tuning augmentation)
        "cifar10": (DataConfig(name="cifar10", root=str(datasets), max_samples=32), (32, 32), 3, False),
        "fashion-mnist": (DataConfig(name="fashion-mnist", root=str(datasets), max_samples=32), (28, 28), 1, False),
        "photos, draft decoding": (DataConfig(path=photos, max_samples=8, jpeg_draft=True), (64, 64), 3, False),
        "photos, device path": (DataConfig(path=photos, max_samples=8, device_augment=True), (64, 64), 3, False),
        "photos, fine-tuning": (DataConfig(path=photos, max_samples=8), (64, 64), 3, True),
        "arrays": (DataConfig(path=str(arrays), format="array", mean=(0.5,) * 4, std=(0.3,) * 4), (32, 32), 4, False),
        "volumes": (DataConfig(path=str(stacks), format="volume"), (32, 32), 1, False),
    }
    for name, (cfg, size, channels, finetuning) in cases.items():
        transform = finetune_transform(cfg, size, (0.5,) * channels, (0.25,) * channels, "rand-m9-mstd0.5-inc1",
                                       0.25, 0.0, 0, "reflect") if finetuning else None
        dataset, _ = train_dataset(cfg, size, channels, batch_size=2, seed=1, transform=transform)
        copy = pickle.loads(pickle.dumps(dataset))
        for item in ((0, 11), (len(dataset) - 1, 12)):
            assert _item_equal(dataset[item], copy[item]), name


def test_an_evaluation_that_fails_stops_its_loader_workers(datasets):
    """An error inside an evaluation loop (the model's: a CUDA out-of-memory error) left the loader's iterator in the
    traceback, which a notebook keeps, and with it the loader's worker processes, idle, until the next error."""
    import multiprocessing

    from torch import nn

    from openmae.data.build import eval_batches
    from openmae.engine.classifier import evaluate
    from openmae.eval.features import extract_features

    class FailsAtItsSecondBatch(nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, images):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("CUDA out of memory (as a test)")
            return torch.zeros(images.shape[0], 10)

        forward_features = forward

    cfg = DataConfig(name="cifar10", root=str(datasets), num_workers=2)
    kept = []
    for run in (lambda b: evaluate(FailsAtItsSecondBatch(), b, torch.device("cpu")),
                lambda b: extract_features(FailsAtItsSecondBatch(), b, torch.device("cpu"))):
        try:
            run(eval_batches(cfg, "test", (32, 32), 3, 16, limit=128))
        except RuntimeError as err:
            kept.append(err)  # as a notebook keeps the last error, its traceback and the frames in it
        assert kept[-1].__traceback__ is not None
        assert not [child for child in multiprocessing.active_children() if child.daemon]
