"""``data.name=csv``: labelled images listed in a CSV file (one file with a split column, or a file a split) read as
the same images in class folders do; what such a file lacks is said by line and column."""

import json
import os
import random
from pathlib import Path

import pytest
import torch
from helpers import call_cli

import openmae
from openmae.config import ConfigError, load_config
from openmae.data.build import split_sources
from openmae.data.config import DataConfig
from openmae.data.datasets import build_source
from openmae.engine.task_config import KnnConfig

CLASSES = ("airplane", "cat", "ship")


def class_folders(tmp_path: Path, datasets: Path) -> Path:
    """A few CIFAR-10 photos as class folders (train/ and test/), linked to the real files."""
    root = tmp_path / "folders"
    for split, count in (("train", 8), ("test", 4)):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for src in sorted((datasets / "cifar10" / split / name).iterdir())[:count]:
                (root / split / name / src.name).symlink_to(src)
    return root


def items(source) -> set[tuple[str, str]]:
    """(the real file, its class name) of every image of a source."""
    return {(os.path.realpath(source.file(i)[0]), source.classes[source.file(i)[1]]) for i in range(len(source))}


def rows(folders: Path, relative_to: Path) -> list[tuple[str, str, str]]:
    out = [(os.path.relpath(path, relative_to), path.parent.name, split)
           for split in ("train", "test") for path in sorted((folders / split).rglob("*.jpg"))]
    random.Random(0).shuffle(out)  # a CSV's order is its own: the classes still come out sorted
    return out


def long_tailed_list(tmp_path: Path, datasets: Path) -> tuple[Path, list[tuple[Path, str, str]]]:
    """<tmp_path>/tail.csv: 8, 4 and 2 training photos of the three classes (a long tail), 4 test photos each; and
    its rows (photo, class, split)."""
    folders = class_folders(tmp_path, datasets)
    table = [(path, name, "train") for name, count in zip(CLASSES, (8, 4, 2))
             for path in sorted((folders / "train" / name).iterdir())[:count]]
    table += [(path, path.parent.name, "test") for path in sorted((folders / "test").rglob("*.jpg"))]
    listed = tmp_path / "tail.csv"
    listed.write_text("path,label,split\n" + "".join(f"{p},{c},{s}\n" for p, c, s in table))
    return listed, table


def test_a_csv_of_images_and_labels_reads_as_the_same_class_folders(tmp_path, datasets):
    folders = class_folders(tmp_path, datasets)
    want = {split: items(build_source(DataConfig(name="imagefolder", path=str(folders)), split, 3))
            for split in ("train", "test")}
    lists = tmp_path / "lists"
    lists.mkdir()
    table = rows(folders, lists)
    # one file with a split column (and a column it does not read), paths relative to the file's folder
    (lists / "all.csv").write_text("filename,label,split,site\n" + "".join(f"{p},{c},{s},a\n" for p, c, s in table))
    # a file a split, tab-separated, with the byte-order mark a spreadsheet writes, other column names
    for split in ("train", "test"):
        (lists / f"{split}.tsv").write_text("\ufeffImage\tClass\n" + "".join(
            f"{p}\t{c}\n" for p, c, s in table if s == split), encoding="utf-8")
        (lists / f"bare-{split}.csv").write_text("".join(f"{p},{c}\n" for p, c, s in table if s == split))  # no header
    (lists / "named.csv").write_text("file,diagnosis,fold\n" + "".join(f"{p},{c},{s}\n" for p, c, s in table))
    for path, extra in ((lists / "all.csv", {}), (lists / "{split}.tsv", {}), (lists / "bare-{split}.csv", {}),
                        (lists / "named.csv", {"csv_columns": ("file", "diagnosis", "fold")})):
        cfg = DataConfig(name="csv", path=str(path), **extra)
        for split in ("train", "test"):
            source = build_source(cfg, split, 3)
            assert source.classes == sorted(CLASSES) and items(source) == want[split], (path, split)

    # kNN through the CLI: --data names the file, and the numbers are the class folders'
    encoder = tmp_path / "encoder.pth"
    torch.save({"model": openmae.create_model("mae_vit_debug_patch4_32").encoder_state_dict()}, encoder)
    knn = [json.loads(call_cli("knn", "--checkpoint", str(encoder), "--data", data, "knn.k=5").stdout.splitlines()[-1])
           for data in (str(folders), str(lists / "all.csv"))]
    assert knn[0] == knn[1] and knn[0]["train_samples"] == 24 and knn[0]["eval_samples"] == 12


def test_numeric_labels_sort_by_value_and_a_list_without_labels_is_for_pretraining(tmp_path, datasets):
    photos = sorted((datasets / "cifar10" / "test" / "cat").iterdir())[:6]
    numbered = tmp_path / "numbered.csv"
    numbered.write_text("path,target,split\n" + "".join(
        f"{p},{label},{split}\n" for p, label, split in zip(photos, ("10", "2", "1", "2", "10", "1"),
                                                             ("train", "train", "train", "test", "test", "test"))))
    source = build_source(DataConfig(name="csv", path=str(numbered)), "train", 3)
    assert source.classes == ["1", "2", "10"] and [source.file(i)[1] for i in range(3)] == [2, 1, 0]

    paths = tmp_path / "paths.csv"  # one column: a list of images, no labels
    paths.write_text("".join(f"{p}\n" for p in photos))
    unlabelled = DataConfig(name="csv", path=str(paths))
    source = build_source(unlabelled, "train", 3)
    assert len(source) == 6 and source.classes == [] and source.file(0) == (photos[0], -1)
    with pytest.raises(ValueError, match=r"lists no labels \(no column named label, class, .*\): fine-tuning, "
                                         r"probes, kNN and evaluate read each image's class"):
        split_sources(unlabelled, 3)


def test_what_a_list_lacks_is_said(tmp_path, datasets):
    photo = sorted((datasets / "cifar10" / "test" / "cat").iterdir())[0]

    def refused(text: str, match: str, split: str = "train", **settings) -> None:
        path = tmp_path / "list.csv"
        path.write_text(text)
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            cfg = DataConfig(name="csv", path=str(path), **settings)
            split_sources(cfg, 3) if split == "both" else build_source(cfg, split, 3)

    refused("name,kind\nx.jpg,cat\n", r"none of its columns \['name', 'kind'\] is an image column \(path, image, "
                                      r".*data.csv_columns=\[<image column>,<label column>\]")
    refused(f"path,label\n{photo},cat\n{photo},\n", r"list.csv, line 3: .* has no 'path' or 'label' value; every "
                                                    r"row needs an image and its label")
    refused(f"path,label,split\n{photo},cat,training\n", r"no rows of the 'train' split; its split column holds "
                                                         r"\['training'\]: set data.train_split")
    refused(f"path,label\n{photo},cat\n", r"has no split column .* set data.holdout=0.1 .* data.path=<folder>/"
                                          r"\{split\}.csv", split="both")
    refused("path,label\nimages/a.jpg,cat\nimages/b.jpg,dog\n",
            rf"the first images listed for the 'train' split do not exist \({tmp_path}/images/a.jpg, ...\): paths "
            rf"in .*list.csv are read relative to its folder {tmp_path} unless absolute")
    refused(f"path,label\n{photo},cat\n", r"has no column 'diagnosis' \(data.csv_columns\)",
            csv_columns=("path", "diagnosis"))
    with pytest.raises(FileNotFoundError, match=r"data.path .*test.csv does not exist \(data.name=csv reads a CSV "
                                                r"file listing images and their labels, one per split\)"):
        build_source(DataConfig(name="csv", path=str(tmp_path / "{split}.csv")), "test", 3)
    with pytest.raises(ConfigError, match=r"data.csv_columns"):
        load_config(KnnConfig, overrides=["data.name=csv", "data.path=x.csv", "data.csv_columns=[path]",
                                          "knn.init=x.pth"])
    with pytest.raises(ConfigError, match=r"data.path.*a CSV file of images and labels \(data.name=csv\)"):
        load_config(KnnConfig, overrides=["data.name=csv", "knn.init=x.pth"])


def test_visualize_reads_the_images_a_list_names(tmp_path, datasets):
    """`openmae visualize model.pth labels.csv`: the images it lists (every split), as files given one by one."""
    photos = sorted((datasets / "cifar10" / "test" / "ship").iterdir())[:3]
    listed = tmp_path / "labels.csv"
    listed.write_text("path,label,split\n" + "".join(f"{p},ship,{s}\n" for p, s in zip(photos, ("train", "test",
                                                                                                   "train"))))
    model = openmae.create_model("mae_vit_debug_patch4_32")
    torch.save({"model": model.state_dict(), "model_config": model.cfg.to_dict()}, tmp_path / "mae.pth")
    proc = call_cli("visualize", "--checkpoint", str(tmp_path / "mae.pth"), str(listed), "-o", str(tmp_path / "pics"))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "pics").iterdir()) == sorted(f"{p.stem}.png" for p in photos)


def test_balanced_sampling_reaches_fine_tuning_and_cached_probes(tmp_path, datasets, caplog):
    """data.balance=classes on a long-tailed list (8 : 4 : 2 images): fine-tuning's epochs and a cached probe's
    draw the classes alike (each run logs the draw); a pretraining list without labels is refused."""
    import logging

    import numpy as np
    from test_finetune import tiny_finetune

    from openmae.engine.distributed import ONE_PROCESS
    from openmae.engine.finetune import FinetuneTask
    from openmae.engine.linprobe import LinprobeConfig, linprobe

    listed, table = long_tailed_list(tmp_path, datasets)
    data = ["data.name=csv", f"data.path={listed}", "data.max_samples=0", "data.balance=classes"]
    task = FinetuneTask(tiny_finetune(tmp_path / "ft", datasets, *data, "train.batch_size=2"), torch.device("cpu"))
    samples, sampler = task.train_data(ONE_PROCESS)
    sampler.set_position(0, end_epoch=50)
    labels = np.array([samples.source.file(i)[1] for i, _ in sampler])
    assert np.bincount(labels, minlength=3) / len(labels) == pytest.approx([1 / 3] * 3, abs=0.05)
    with caplog.at_level(logging.INFO, logger="openmae.data"):
        linprobe(load_config(LinprobeConfig, overrides=[
            "model.name=mae_vit_debug_patch4_32", *data, "linprobe.mode=cached", "train.epochs=1",
            "train.warmup_epochs=0", "train.batch_size=2", "train.progress=false", "train.tensorboard=false",
            f"train.output_dir={tmp_path / 'probe'}"]))
    assert "each epoch draws its 14 images with replacement, the 3 classes alike: the rarest (ship, 2 images)" \
           in caplog.text
    paths = tmp_path / "paths.csv"
    paths.write_text("".join(f"{p}\n" for p, _, _ in table))
    with pytest.raises(ValueError, match="these images have no labels"):
        from openmae.engine.pretrain import PretrainConfig, pretrain

        pretrain(load_config(PretrainConfig, overrides=[
            "model.name=mae_vit_debug_patch4_32", "data.name=csv", f"data.path={paths}", "data.balance=classes",
            "train.epochs=1", "train.warmup_epochs=0", "train.batch_size=2", f"train.output_dir={tmp_path / 'pre'}"]))


def test_pretraining_on_a_list_without_a_test_split_shows_its_training_images(tmp_path, datasets):
    """The reconstruction pictures show the evaluation split's images where the list has them; a list of training
    images only (a {split} pattern with no test file, a split column without test rows) shows training images
    instead of failing at the first epoch's end."""
    from openmae.engine.pretrain import PretrainConfig, pretrain

    photos = sorted((datasets / "cifar10" / "test" / "cat").iterdir())[:8]
    (tmp_path / "train.csv").write_text("path,label\n" + "".join(f"{p},cat\n" for p in photos))
    (tmp_path / "split.csv").write_text("path,label,split\n" + "".join(f"{p},cat,train\n" for p in photos))
    for path in (tmp_path / "{split}.csv", tmp_path / "split.csv"):
        out = tmp_path / path.stem
        pretrain(load_config(PretrainConfig, overrides=[
            "model.name=mae_vit_debug_patch4_32", "data.name=csv", f"data.path={path}", "train.epochs=1",
            "train.warmup_epochs=0", "train.batch_size=4", "train.progress=false", "train.tensorboard=false",
            "pretrain.vis_images=2", f"train.output_dir={out}"]))
        assert (out / "pictures" / "reconstruction-epoch0001.png").is_file()
