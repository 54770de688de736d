"""Configuration: defaults, YAML, overrides, type checks, task-specific section defaults."""

import re
from pathlib import Path

import pytest
import torch

from openmae.config import ConfigError, dump_yaml, load_config, to_dict
from openmae.engine.finetune import FinetuneConfig
from openmae.engine.knn_eval import KnnConfig
from openmae.engine.linprobe import LinprobeConfig
from openmae.engine.pretrain import PretrainConfig

REPO = Path(__file__).resolve().parents[1]


def test_task_defaults_survive_partial_overrides():
    cfg = load_config(LinprobeConfig, overrides=["train.epochs=5", "train.warmup_epochs=1", "data.name=cifar10"])
    assert cfg.train.blr == 0.1 and cfg.train.optimizer == "lars" and cfg.train.weight_decay == 0.0
    assert cfg.train.epochs == 5 and cfg.data.crop_scale == (0.08, 1.0)
    ft = load_config(FinetuneConfig, overrides=["train.batch_size=32", "data.name=cifar10"])
    assert ft.train.blr == 5e-4 and ft.train.betas == (0.9, 0.999) and ft.model.name == "auto"


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: mae_vit_tiny_patch4_32\ntrain:\n  epochs: 7\n  betas: [0.8, 0.9]\n")
    cfg = load_config(PretrainConfig, [path], ["train.epochs=9", "train.warmup_epochs=1", "model.img_size=64", "data.path=/x"])
    assert cfg.train.epochs == 9 and cfg.train.betas == (0.8, 0.9) and cfg.model.img_size == (64, 64)
    assert cfg.model.resolve().img_size == (64, 64)
    again = load_config(PretrainConfig, overrides=["train.epochs=9", "data.path=/x", "train.warmup_epochs=1"])
    assert to_dict(again)["train"]["epochs"] == 9
    assert "epochs: 9" in dump_yaml(cfg)


@pytest.mark.parametrize("override,message", [
    ("train.epochs=1.5", "train.epochs=1.5 must be an integer"),
    ("train.betas=[0.9]", "train.betas=[0.9] must have 2 items"),
    ("train.clip_grad=-1", "train.clip_grad=-1.0 is invalid"),
    ("model.norm_pix_loss=maybe", "model.norm_pix_loss='maybe' is not a valid bool"),
    ("nonsense=1", "unknown setting(s) ['nonsense']; valid under 'top level'"),
    ("train.lrr=0.1", "unknown setting(s) ['train.lrr'] (did you mean train.lr?)"),
    ("train.batchsize=4", "(did you mean train.batch_size?)"),
    ("epochs=3", "unknown setting(s) ['epochs'] (did you mean train.epochs?)"),
    ("pretrain.mask=0.5", "(did you mean pretrain.mask_ratio?)"),
    ("data.img_size=32", "unknown setting(s) ['data.img_size'] (did you mean model.img_size?)"),  # another section
    ("train.mask_ratio=0.5", "(did you mean pretrain.mask_ratio?)"),
    ("train.accum_iter=4", "(did you mean train.accum_steps?)"),  # the official code's names
    ("input_size=64", "unknown setting(s) ['input_size'] (did you mean model.img_size?)"),
    ("model.preset=mae_vit_base_patch16", "(did you mean model.name?)"),
    ("model=mae_vit_base_patch16", "model is a section of settings, not a value: got 'mae_vit_base_patch16'; did you "
                                   "mean model.name=mae_vit_base_patch16?"),
    ("data=/my/images", "did you mean data.path=/my/images?"),
    ("train=3", "train is a section of settings, not a value: got 3; its settings are ['accum_steps',"),
    ("data.crop_scale=[0.5,0.2]", "data.crop_scale=(0.5, 0.2) is invalid"),
    ("train.warmup_epochs=900", "train.warmup_epochs=900.0 is invalid: must be between 0 and train.epochs (800)"),
    ("train.epochs=10", "a shorter run than the recipe's needs a shorter warm-up too, such as train.warmup_epochs=0"),
    ("pretrain.knn_every_epochs=1", "kNN needs labels"),
    ("train", "must look like key.sub=value"),
    ("train.compile_mode=fast", "train.compile_mode='fast' is invalid: must be default or reduce-overhead"),
])
def test_invalid_settings_name_key_value_and_range(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(PretrainConfig, overrides=["data.path=/x", override])
    assert message in str(err.value)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_preset_loads_and_validates(path):
    cls = {"pretrain": PretrainConfig, "finetune": FinetuneConfig, "linprobe": LinprobeConfig}[path.parent.name]
    overlay = re.search(r"applied on top of (\S+\.yaml)", path.read_text())  # an overlay: a second -c after its base
    cfg = load_config(cls, [path.parent / overlay.group(1), path] if overlay else [path])
    if cfg.model.name != "auto":
        cfg.model.resolve()


def test_presets_are_installed_with_the_package_and_read_by_name_from_anywhere(tmp_path, monkeypatch):
    """A ``pip install`` has no checkout: ``-c mae_vit_base_imagenet`` (or the checkout's path the README shows) reads
    the preset installed with openmae, from any folder; a wrong name suggests the closest and lists them all. A
    wheel built from the tree holds every preset."""
    import subprocess
    import sys
    import zipfile

    from openmae.config import PRESETS, preset_names

    assert PRESETS.parent.name == "openmae" and (REPO / "configs").resolve() == PRESETS.resolve()
    by_path = to_dict(load_config(PretrainConfig, [REPO / "configs/pretrain/mae_vit_base_imagenet.yaml"]))
    monkeypatch.chdir(tmp_path)  # not in the checkout
    for given in ("mae_vit_base_imagenet", "mae_vit_base_imagenet.yaml", "pretrain/mae_vit_base_imagenet",
                  "configs/pretrain/mae_vit_base_imagenet.yaml"):
        assert to_dict(load_config(PretrainConfig, [given])) == by_path, given
    both = load_config(FinetuneConfig, ["fashion_mnist", "fashion_mnist_30ep"])  # a base and its overlay
    assert (both.train.epochs, both.finetune.mixup) == (30, 0.8)
    assert "small_cached" in preset_names("linprobe") and load_config(LinprobeConfig, ["small_cached"])
    with pytest.raises(ConfigError, match=r"config file mae_vit_bse_imagenet does not exist; did you mean the preset "
                                          r"mae_vit_base_imagenet\? The presets of this command: cifar10, .*"
                                          r"mae_vit_large_imagenet \(-c <name>\)"):
        load_config(PretrainConfig, ["mae_vit_bse_imagenet"])
    with pytest.raises(ConfigError, match=r"config file \.\./configs/x does not exist"):
        load_config(PretrainConfig, ["../configs/x"])
    local = tmp_path / "cifar10.yaml"  # a file of the user's own wins over a preset's name
    local.write_text("train:\n  epochs: 3\n  warmup_epochs: 1\n")
    assert load_config(PretrainConfig, ["cifar10.yaml"], check=False).train.epochs == 3
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(REPO),
                    "-w", str(tmp_path / "wheel")], check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("openmae-*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("openmae/configs/")}
    assert shipped == {f"openmae/configs/{p.relative_to(PRESETS).as_posix()}" for p in PRESETS.glob("*/*.yaml")}

def test_paper_presets_hold_the_paper_recipe():
    base = load_config(PretrainConfig, [REPO / "configs/pretrain/mae_vit_base_imagenet.yaml"])
    assert (base.train.blr, base.train.weight_decay, base.train.betas, base.pretrain.mask_ratio) == (1.5e-4, 0.05, (0.9, 0.95), 0.75)
    assert base.train.batch_size * base.train.accum_steps * 16 == 4096 and base.model.norm_pix_loss
    ft = load_config(FinetuneConfig, [REPO / "configs/finetune/vit_base_imagenet.yaml"])
    assert (ft.finetune.layer_decay, ft.finetune.drop_path, ft.train.blr, ft.train.epochs) == (0.65, 0.1, 5e-4, 100)
    lp = load_config(LinprobeConfig, [REPO / "configs/linprobe/vit_base_imagenet.yaml"])
    assert (lp.train.optimizer, lp.train.blr, lp.train.batch_size * lp.train.accum_steps * 8) == ("lars", 0.1, 16384)


def test_fashion_mnist_30_epoch_overlay_changes_only_its_three_settings():
    base = to_dict(load_config(FinetuneConfig, [REPO / "configs/finetune/fashion_mnist.yaml"]))
    both = to_dict(load_config(FinetuneConfig, [REPO / "configs/finetune/fashion_mnist.yaml",
                                                REPO / "configs/finetune/fashion_mnist_30ep.yaml"]))
    changed = {(section, key): value for section in both for key, value in both[section].items()
               if base[section][key] != value}
    assert changed == {("train", "epochs"): 30, ("finetune", "reprob"): 0.25, ("finetune", "mixup"): 0.8}


@pytest.mark.parametrize("cls, override, message", [
    (LinprobeConfig, "linprobe.last_blocks=2", "set linprobe.mode=cached"),
    (LinprobeConfig, "linprobe.last_blocks=0", "linprobe.last_blocks=0 is invalid"),
    (KnnConfig, "knn.last_blocks=0", "knn.last_blocks=0 is invalid"),
    (LinprobeConfig, "linprobe.pooling=cls+mean", "cls+mean is for cached features"),
    (KnnConfig, "knn.pooling=max", "one of ('cls', 'mean', 'cls+mean')"),
    (KnnConfig, "data.holdout=1.0", "a fraction in [0, 1)"),
    (KnnConfig, "data.holdout=0.1 data.eval_split=train", "a split other than data.train_split='train' when data.holdout > 0"),
    (FinetuneConfig, "data.report_eval_split=true", "false unless data.holdout > 0"),
    (LinprobeConfig, "data.report_eval_split=true", "false unless data.holdout > 0"),
    (KnnConfig, "data.holdout=0.1 data.report_eval_split=true", "false for kNN (one evaluation, no epoch to choose)"),
])
def test_feature_block_settings_are_checked(cls, override, message):
    with pytest.raises(ConfigError) as err:
        load_config(cls, overrides=["data.name=cifar10", *override.split()])
    assert message in str(err.value)


def test_finetune_crop_scale_reaches_the_training_transform(datasets):
    """The crop range is a setting (timm's 0.08-1 by default; small images need a milder one)."""
    from openmae.engine.distributed import DistInfo
    from openmae.engine.finetune import FinetuneTask

    for override, scale in (([], (0.08, 1.0)), (["data.crop_scale=[0.5,1.0]"], (0.5, 1.0))):
        cfg = load_config(FinetuneConfig, overrides=["model.name=mae_vit_debug_patch4_32", "data.name=cifar10",
                                                     f"data.root={datasets}", "data.max_samples=64", *override])
        task = FinetuneTask(cfg, torch.device("cpu"))
        dataset, _ = task.train_data(DistInfo())
        crops = [t for t in dataset.transform.transforms if type(t).__name__.startswith("RandomResizedCrop")]
        assert len(crops) == 1 and tuple(crops[0].scale) == scale


@pytest.mark.parametrize("holdout", [0.0, 0.5])
@pytest.mark.parametrize("task", ["finetune", "linprobe"])
def test_each_folder_is_scanned_once_per_run(datasets, monkeypatch, task, holdout):
    """Classes, training images and every epoch's evaluation come from one scan of each folder (minutes on
    ImageNet-sized folders); with data.holdout, one scan of the training folder gives both."""
    import openmae.data.build as build
    from openmae.engine.distributed import DistInfo
    from openmae.engine.finetune import FinetuneTask
    from openmae.engine.linprobe import LinprobeTask

    scans = []
    real = build.build_source
    import openmae.data.datasets as datasets_module

    def counted(cfg, split, channels):
        scans.append(split)
        return real(cfg, split, channels)

    for module in (build, datasets_module):  # wherever a task would import it from
        monkeypatch.setattr(module, "build_source", counted)
    cls, task_cls = {"finetune": (FinetuneConfig, FinetuneTask), "linprobe": (LinprobeConfig, LinprobeTask)}[task]
    cfg = load_config(cls, overrides=["model.name=mae_vit_debug_patch4_32", "data.name=cifar10", f"data.root={datasets}",
                                      "data.max_samples=64", "data.max_eval_samples=16", "data.num_workers=0",
                                      f"data.holdout={holdout}"])
    made = task_cls(cfg, torch.device("cpu"))
    dataset, _ = made.train_data(DistInfo())
    for _ in range(2):  # two epochs' evaluations
        assert 0 <= made.evaluate()["top1"] <= 100
    assert len(dataset) == 64 and scans == (["train"] if holdout else ["train", "test"])


def test_pretraining_monitor_reads_its_images_once(datasets, monkeypatch):
    """The reconstruction pictures' fixed images and the kNN monitor's two splits are read at first use and kept,
    not rescanned at every monitored epoch."""
    import openmae.data.build as build
    from openmae.engine.pretrain import PretrainTask

    scans = []
    real = build.build_source

    def counted(cfg, split, channels):
        scans.append(split)
        return real(cfg, split, channels)

    monkeypatch.setattr(build, "build_source", counted)
    cfg = load_config(PretrainConfig, overrides=["model.name=mae_vit_debug_patch4_32", "data.name=cifar10",
                                                 f"data.root={datasets}", "data.num_workers=0", "pretrain.vis_images=4",
                                                 "pretrain.knn_every_epochs=1", "pretrain.knn_train_samples=64",
                                                 "pretrain.knn_eval_samples=16"])
    task = PretrainTask(cfg)
    for _ in range(2):  # two monitored epochs
        assert task.picture_batch.images.shape == (4, 3, 32, 32)
        assert 0 <= task.knn()["knn_top1"] <= 100
    assert scans == ["test", "train", "test"]
