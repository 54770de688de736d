"""``data.multi_label``: images of several classes each (a CSV list's label cells ``cat|animal``): read as rows of
0 / 1, trained with a yes / no a class (binary cross-entropy, mixup of rows as timm's), measured by mean average
precision, ROC-AUC, F1 and exact match (scikit-learn's definitions), in fine-tuning, probes, kNN and evaluate."""

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import openmae
from openmae.config import ConfigError, load_config
from openmae.data.build import split_sources
from openmae.data.config import DataConfig
from openmae.data.datasets import build_source
from openmae.engine.task_config import FinetuneConfig, KnnConfig, LinprobeConfig
from openmae.eval.multilabel import average_precision, multilabel_scores, precision_recall
from openmae.eval.ranking import roc_auc

# each photo's tags: its CIFAR-10 class and what it is (a bird's row is empty: none of these classes)
TAGS = {"airplane": "airplane|vehicle", "cat": "cat|animal", "ship": "ship|vehicle", "bird": ""}
CLASSES = ["airplane", "animal", "cat", "ship", "vehicle"]


def tagged_list(tmp_path: Path, datasets: Path, train: int = 12, test: int = 6, separator: str = "|") -> Path:
    """A CSV list of real CIFAR-10 photos (``train`` / ``test`` of each class), each with its tags."""
    rows = []
    for split, count in (("train", train), ("test", test)):
        for name, tags in TAGS.items():
            for photo in sorted((datasets / "cifar10" / split / name).iterdir())[:count]:
                rows.append((str(photo), tags.replace("|", separator), split))
    path = tmp_path / "tags.csv"
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([("path", "labels", "split"), *rows])
    return path


def rows_of(source) -> np.ndarray:
    return np.stack([source.file(i)[1] for i in range(len(source))])


def test_average_precision_and_the_multi_label_scores_are_scikit_learns():
    # scikit-learn's documented example of average_precision_score
    assert average_precision(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool)) == pytest.approx(5 / 6)
    # without ties: the mean over the positives of the precision at each one's rank
    g = np.random.default_rng(0)
    scores, positive = g.random(50), g.random(50) < 0.3
    ranked = positive[np.argsort(-scores)]
    at = np.flatnonzero(ranked)
    assert average_precision(scores, positive) == pytest.approx(np.mean((np.arange(len(at)) + 1) / (at + 1)))
    # tied scores count as one threshold: [0.9, 0.5 (pos), 0.5 (neg)] + a positive at 0.9
    assert average_precision(np.array([0.9, 0.5, 0.5, 0.9]), np.array([0, 1, 0, 1], bool)) == pytest.approx(
        0.5 * 0.5 + 0.5 * 0.5)  # at 0.9: precision 1/2, recall 1/2; at 0.5: precision 2/4, recall +1/2
    assert np.isnan(average_precision(scores, np.zeros(50, bool)))
    # scikit-learn's documented precision_recall_curve of that example, highest score first, without recall 0
    precision, recall = precision_recall(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool))
    assert precision.tolist() == pytest.approx([1, 0.5, 2 / 3, 0.5]) and recall.tolist() == [0.5, 0.5, 1, 1]

    probs = np.array([[0.9, 0.2, 0.6], [0.8, 0.7, 0.1], [0.3, 0.4, 0.2], [0.1, 0.9, 0.4]])
    truth = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 1, 0]], dtype=np.float32)
    out = multilabel_scores(probs, truth, per_class=True)
    # class 0: TP 2; class 1: TP 2, FP 0; class 2: FP 1 and no positives (no AP, no AUC; F1 0, precision 0)
    assert out["per_class_f1"] == [100.0, 100.0, 0.0]
    assert out["per_class_precision"] == [100.0, 100.0, 0.0] and out["per_class_recall"] == [100.0, 100.0, None]
    assert out["per_class_ap"][2] is None and out["per_class_auc"][2] is None and out["per_class_images"] == [2, 2, 0]
    assert out["macro_f1"] == pytest.approx(200 / 3)
    assert out["micro_f1"] == pytest.approx(100 * 2 * 4 / (2 * 4 + 1))  # 4 TP, 1 FP, 0 FN
    assert out["exact_match"] == 75.0  # image 0 predicted {0, 2}
    assert out["mean_ap"] == pytest.approx(100 * np.mean([average_precision(probs[:, c], truth[:, c] > 0)
                                                           for c in (0, 1)]))
    assert out["roc_auc"] == pytest.approx(100 * np.mean([roc_auc(probs[:, c], truth[:, c] > 0) for c in (0, 1)]))


def test_label_cells_of_several_classes_read_as_rows(tmp_path, datasets, caplog):
    for separator in ("|", " ", ";"):
        listed = tagged_list(tmp_path, datasets, 2, 1, separator)
        cfg = DataConfig(name="csv", path=str(listed), multi_label=True)
        train, test = split_sources(cfg, 3)
        assert train.classes == CLASSES and len(train) == 8 and len(test) == 4, separator
        want = [[float(c in TAGS[Path(train.file(i)[0]).parent.name].split("|")) for c in CLASSES]
                for i in range(len(train))]
        assert rows_of(train).tolist() == want  # the bird's row is all zeros
    # named separator; a class that only the test split names still has its column
    listed.write_text(listed.read_text().replace("ship;vehicle,test", "ship;vehicle;sea,test"))
    cfg = DataConfig(name="csv", path=str(listed), multi_label=True, label_separator=";")
    assert build_source(cfg, "train", 3).classes == ["airplane", "animal", "cat", "sea", "ship", "vehicle"]
    # read as one class an image, an empty cell is refused, and the way out said
    with pytest.raises(ValueError, match=r"line 8: .* has no 'path' or 'labels' value; every row needs an image and "
                                         r"its label \(images of several classes each, or of none: "
                                         r"data.multi_label=true\)"):
        build_source(DataConfig(name="csv", path=str(listed)), "train", 3)
    # read as one class an image, cells listing several with '|' are said to look like it, once a list
    photo = sorted((datasets / "cifar10" / "test" / "cat").iterdir())[0]
    bare = tmp_path / "bare.csv"
    bare.write_text(f"path,label\n{photo},cat|animal\n{photo},cat\n")
    with caplog.at_level(logging.WARNING, logger="openmae.data"):
        for _ in range(2):
            assert build_source(DataConfig(name="csv", path=str(bare)), "train", 3).classes == ["cat", "cat|animal"]
    assert caplog.text.count("labels such as 'cat|animal' read as classes of their own; if they list several "
                             "classes of an image, set data.multi_label=true") == 1
    for settings, match in (({"name": "imagefolder", "path": "x"}, "data.multi_label"),
                            ({"balance": "classes"}, "data.balance"), ({"format": "volume"}, "data.format")):
        with pytest.raises(ConfigError, match=match):
            load_config(KnnConfig, overrides=["data.name=csv", "data.path=x.csv", "data.multi_label=true",
                                              "knn.init=x.pth", *(f"data.{k}={v}" for k, v in settings.items())])
    for select_by, multi in (("top1", True), ("balanced_accuracy", True), ("mean_ap", False)):
        with pytest.raises(ConfigError, match="finetune.select_by"):
            load_config(FinetuneConfig, overrides=["data.name=csv", "data.path=x.csv", f"data.multi_label={multi}",
                                                   f"finetune.select_by={select_by}"])


def test_mixed_rows_are_timms_multi_label_mixup(tmp_path, datasets):
    """Fine-tuning's mixup / cutmix of images of several classes: the images and targets timm's Mixup gives with
    ``multi_label=True`` (timm >= 1.0.31), from the same draws, with label smoothing."""
    import random

    from test_finetune import tiny_finetune
    from timm.data import Mixup

    from openmae.engine.finetune import FinetuneTask

    cfg = tiny_finetune(tmp_path, datasets, "data.name=csv", f"data.path={tagged_list(tmp_path, datasets)}",
                        "data.multi_label=true", "finetune.mixup=0.8", "finetune.cutmix=1.0", "finetune.smoothing=0.1",
                        "data.max_samples=0", "train.batch_size=8")
    task = FinetuneTask(cfg, torch.device("cpu"))
    images = torch.randn(8, 3, 32, 32)
    labels = (torch.rand(8, 5) < 0.4).float()
    reference = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=5, multi_label=True)
    losses = []
    for seed in range(6):  # both mixup and cutmix draws
        np.random.seed(seed)
        random.seed(seed)
        want_images, want_targets = reference(images.clone(), labels)
        np.random.seed(seed)
        random.seed(seed)
        seen = {}

        def model(x, seen=seen):
            seen["images"] = x.clone()
            return x.mean((2, 3)).repeat(1, 2)[:, :5]

        from openmae.data.loader import Batch
        loss = task.forward(model, Batch(images.clone(), labels, torch.zeros(8, dtype=torch.long), 0), torch.device("cpu"))
        assert torch.equal(seen["images"], want_images), seed
        want = F.binary_cross_entropy_with_logits(model(want_images), want_targets)
        assert loss.loss.item() == pytest.approx(want.item(), rel=1e-6), seed
        losses.append(loss.loss.item())
    assert len(set(losses)) == 6


def test_fine_tuning_on_several_classes_an_image_chooses_by_mean_ap_and_evaluate_agrees(tmp_path, datasets):
    """A fine-tuning run on tagged photos (mixup and cutmix on): each evaluation records mean AP, ROC-AUC, F1 and
    exact match, no top-1; model-best.pth is the epoch of the best mean AP; `openmae evaluate` reads the file's
    labels as several an image by itself and gives the numbers the run recorded; its predictions CSV gives the
    exact-match rate and each class's probability; converted to a timm / Hugging Face folder it stays a classifier
    of several classes an image."""
    from test_finetune import tiny_finetune

    from openmae.cli.main import main
    from openmae.engine.finetune import finetune

    listed = tagged_list(tmp_path, datasets)
    out = tmp_path / "ft"
    finetune(tiny_finetune(out, datasets, "data.name=csv", f"data.path={listed}", "data.multi_label=true",
                           "data.max_samples=0", "data.max_eval_samples=0", "train.epochs=3", "train.batch_size=8",
                           "finetune.mixup=0.8", "finetune.cutmix=1.0"))
    evals = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "mean_ap" in r]
    assert len(evals) == 3 and not any("top1" in r for r in evals)
    assert {"roc_auc", "macro_f1", "micro_f1", "exact_match", "eval_loss", "best_mean_ap"} <= set(evals[-1])
    best = max(evals, key=lambda r: r["mean_ap"])
    assert evals[-1]["best_epoch"] == best["epoch"] and evals[-1]["best_mean_ap"] == best["mean_ap"]
    kept = torch.load(out / "model-best.pth", weights_only=True)
    assert kept["multi_label"] is True and kept["epoch"] == best["epoch"] and kept["classes"] == CLASSES
    from openmae.convert.summary import format_summary, summarize

    assert "classifier head (5 classes, several an image: airplane," in format_summary(summarize(out / "model-best.pth"))

    preds = tmp_path / "preds.csv"
    code = main(["evaluate", "--checkpoint", str(out / "model-best.pth"), "--data", str(listed),
                 "data.num_workers=0", "-o", str(tmp_path / "eval.json"), "--predictions", str(preds),
                 "--plot", str(tmp_path / "curves.png")])
    assert code == 0
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the classes' precision-recall curves
    result = json.loads((tmp_path / "eval.json").read_text())
    with pytest.raises(ConfigError, match=r"trained on several classes an image .* data.name=cifar10 has one class"):
        from openmae.engine.evaluate import EvaluateConfig, run_evaluate

        run_evaluate(load_config(EvaluateConfig, overrides=[f"evaluate.init={out / 'model-best.pth'}",
                                                            "data.name=cifar10", f"data.root={datasets}"]))
    for key in ("mean_ap", "roc_auc", "macro_f1", "micro_f1", "exact_match", "eval_loss"):
        assert result[key] == pytest.approx(best[key], abs=1e-4), key
    assert result["per_class_images"] == {"airplane": 6, "animal": 6, "cat": 6, "ship": 6, "vehicle": 12}
    rows = list(csv.DictReader(preds.open()))
    assert len(rows) == result["samples"] == 24
    assert 100.0 * sum(int(r["exact"]) for r in rows) / 24 == pytest.approx(result["exact_match"])
    for r in rows:
        assert r["labels"] == "|".join(sorted(TAGS[Path(r["image"]).parent.name].split("|"))).strip("|")  # classes' order
        assert r["predicted"] == "|".join(c for c in CLASSES if float(r[f"p_{c}"]) > 0.5)
    probs = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rows])
    truth = np.array([[float(c in r["labels"].split("|")) for c in CLASSES] for r in rows])
    assert multilabel_scores(probs, truth)["mean_ap"] == pytest.approx(result["mean_ap"], abs=0.5)  # 6 decimals

    # to a timm / Hugging Face folder: transformers learns it with binary cross-entropy (its problem_type), and
    # the folder evaluated reads its labels as several an image, as the run's own file
    from transformers import AutoModelForImageClassification

    from openmae.convert.export import convert_file

    folder = convert_file(out / "model-best.pth", tmp_path / "hf", "hf")
    by_hf = AutoModelForImageClassification.from_pretrained(folder)
    assert by_hf.config.problem_type == "multi_label_classification"
    images, targets = torch.randn(2, 3, 32, 32), torch.tensor([[1.0, 0, 1, 0, 0], [0, 0, 0, 1, 1]])
    got = by_hf(pixel_values=images, labels=targets)
    assert got.loss.item() == pytest.approx(F.binary_cross_entropy_with_logits(got.logits, targets).item())
    code = main(["evaluate", "--checkpoint", str(folder), "--data", str(listed), "data.num_workers=0",
                 "-o", str(tmp_path / "folder.json")])
    assert code == 0
    assert json.loads((tmp_path / "folder.json").read_text())["mean_ap"] == pytest.approx(result["mean_ap"], abs=1e-4)


def test_probes_and_knn_of_several_classes_an_image(tmp_path, datasets):
    """A cached probe trains with binary cross-entropy and is chosen by mean AP; kNN gives each class the share of
    the neighbours' weight that holds it: a hand-made case, and `openmae knn` on the tagged photos."""
    from helpers import call_cli

    from openmae.engine.linprobe import linprobe
    from openmae.eval.knn import knn_accuracy

    listed = tagged_list(tmp_path, datasets)
    data = ["model.name=mae_vit_debug_patch4_32", "data.name=csv", f"data.path={listed}", "data.multi_label=true",
            "data.num_workers=0"]
    result = linprobe(load_config(LinprobeConfig, overrides=[
        *data, "linprobe.mode=cached", "train.epochs=2", "train.warmup_epochs=0", "train.batch_size=8",
        "train.progress=false", "train.tensorboard=false", f"train.output_dir={tmp_path / 'probe'}"]))
    evals = [r for r in map(json.loads, (tmp_path / "probe" / "metrics.jsonl").read_text().splitlines())
             if "mean_ap" in r]
    assert len(evals) == 2 and evals[-1]["best_mean_ap"] == max(r["mean_ap"] for r in evals)
    assert torch.load(tmp_path / "probe" / "model-best.pth", weights_only=True)["multi_label"] is True
    assert result["best_mean_ap"] == evals[-1]["best_mean_ap"]
    online = linprobe(load_config(LinprobeConfig, overrides=[
        *data, "linprobe.mode=online", "linprobe.select_by=roc_auc", "train.epochs=1", "train.warmup_epochs=0",
        "train.batch_size=8", "train.progress=false", "train.tensorboard=false", f"train.output_dir={tmp_path / 'on'}"]))
    assert online["best_roc_auc"] == online["roc_auc"] and "top1" not in online and online["best_epoch"] == 1

    # two training images a class pair apart: the query's neighbours weigh exp(1 / 0.5) and exp(0 / 0.5)
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    rows = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = knn_accuracy(train, rows, query, torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), 3, k=2, temperature=0.5)
    near, far = np.exp(2.0) / (np.exp(2.0) + 1), 1 / (np.exp(2.0) + 1)
    probs = np.array([[near, 1.0, far], [far, 1.0, near]])
    want = multilabel_scores(probs, np.array([[1, 1, 0], [0, 0, 1]], dtype=np.float32))
    assert out == pytest.approx({f"knn_{k}": v for k, v in want.items()}, nan_ok=True)
    assert out["knn_exact_match"] == 50.0  # the second query is also given the middle class

    encoder = tmp_path / "encoder.pth"
    torch.save({"model": openmae.create_model("mae_vit_debug_patch4_32").encoder_state_dict()}, encoder)
    knn = json.loads(call_cli("knn", "--checkpoint", str(encoder), "--data", str(listed), "data.multi_label=true",
                              "knn.k=5").stdout.splitlines()[-1])
    assert 0 < knn["knn_mean_ap"] <= 100 and knn["eval_samples"] == 24 and "knn_top1" not in knn


def test_a_column_a_class_reads_as_rows_or_as_one_class_an_image(tmp_path, datasets):
    """``data.label_columns``: a column a class, 1 where the image is of it (CheXpert's findings; ISIC's one-hot
    diagnoses), 0 or empty where not; -1 (uncertain) read as ``data.uncertain_label`` (CheXpert's U-Zeros /
    U-Ones), refused while unset; one-hot rows read as one class an image without ``data.multi_label``."""
    photos = sorted((datasets / "cifar10" / "test" / "cat").iterdir())[:4]
    marks = (("1", "0", "1.0"), ("0", "", "1"), ("-1", "1", "0"), ("0", "0", "0"))
    listed = tmp_path / "findings.csv"
    listed.write_text("Path,Sex,Edema,Effusion,Mass,split\n" + "".join(
        f"{p},F,{','.join(m)},train\n" for p, m in zip(photos, marks)))
    cfg = DataConfig(name="csv", path=str(listed), multi_label=True, label_columns=("edema", "Effusion", "Mass"),
                     uncertain_label=1.0)
    source = build_source(cfg, "train", 3)
    assert source.classes == ["Edema", "Effusion", "Mass"]  # the file's spelling, the columns' order
    assert rows_of(source).tolist() == [[1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 0, 0]]
    cfg.uncertain_label = 0.0
    assert rows_of(build_source(cfg, "train", 3))[2].tolist() == [0, 1, 0]
    cfg.uncertain_label = None
    with pytest.raises(ValueError, match=r"findings.csv, line 4: 'Edema' is -1 \(uncertain\); set "
                                         r"data.uncertain_label=0 or 1"):
        build_source(cfg, "train", 3)

    # one-hot: a class index an image
    listed.write_text("image,MEL,NV,BCC\n" + "".join(f"{p},{m}\n" for p, m in zip(photos[:3], ("0,1,0", "1,0,0",
                                                                                               "0,0,1"))))
    one = DataConfig(name="csv", path=str(listed), label_columns=("MEL", "NV", "BCC"))
    assert [one_class for _, one_class in (build_source(one, "train", 3).file(i) for i in range(3))] == [1, 0, 2]
    listed.write_text(listed.read_text() + f"{photos[3]},1,1,0\n")
    with pytest.raises(ValueError, match=r"line 5: 2 of data.label_columns marked .* one class an image .* "
                                         r"data.multi_label=true"):
        build_source(one, "train", 3)
    with pytest.raises(ValueError, match=r"has no column 'Nevus' \(data.label_columns\)"):
        build_source(DataConfig(name="csv", path=str(listed), label_columns=("MEL", "Nevus")), "train", 3)
    listed.write_text(listed.read_text() + f"{photos[3]},1,yes,0\n")
    with pytest.raises(ValueError, match=r"line 6: 'NV' holds 'yes'; a class column holds 1 \(of the class\), 0 or "
                                         r"nothing \(not\), -1 \(uncertain\)"):
        build_source(DataConfig(name="csv", path=str(listed), multi_label=True, label_columns=("MEL", "NV", "BCC")),
                     "train", 3)
