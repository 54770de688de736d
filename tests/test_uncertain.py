"""``data.uncertain_label=ignore``: a class column's -1 (uncertain, CheXpert's findings) is an unknown label, left out
of the losses (fine-tuning's, the probes', class weights'), of the measures (each class measured on the images whose
label of it is known) and of kNN's votes (CheXpert's "U-Ignore")."""

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_multilabel import rows_of

from openmae.config import ConfigError, load_config
from openmae.data.config import DataConfig
from openmae.data.datasets import build_source
from openmae.engine.finetune import mixed_rows
from openmae.engine.imbalance import ClassBalance
from openmae.engine.row_loss import image_losses, row_loss
from openmae.engine.task_config import LinprobeConfig
from openmae.eval.calibration import multilabel_calibration
from openmae.eval.knn import knn_accuracy
from openmae.eval.multilabel import average_precision, multilabel_scores
from openmae.eval.ranking import roc_auc

NAN = float("nan")
FINDINGS = ("Edema", "Effusion", "Mass")


def findings_list(tmp_path, datasets, count: int = 10) -> tuple:
    """A CheXpert-like list of real photos (``count`` train and test each): a column a finding, 1 / 0 / empty / -1
    (uncertain), drawn at random; the marks (N, 3) with -1 kept."""
    photos = {s: sorted((datasets / "cifar10" / s / "cat").iterdir())[:count] + sorted(
        (datasets / "cifar10" / s / "ship").iterdir())[:count] for s in ("train", "test")}
    for seed in range(100):  # the first draw where each split has each finding, its absence and an uncertain one
        marks = np.random.default_rng(seed).choice([1, 0, -1], size=(4 * count, 3), p=[0.4, 0.4, 0.2])
        if all(set(part.tolist()) == {-1, 0, 1} for split in np.split(marks, 2) for part in split.T):
            break
    listed = tmp_path / "findings.csv"
    with open(listed, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["Path", *FINDINGS, "split"])
        rows = [(p, s) for s in ("train", "test") for p in photos[s]]
        for (photo, split), m in zip(rows, marks):
            out.writerow([photo, *("" if v == 0 and i == 2 else str(v) for i, v in enumerate(m)), split])
    return listed, marks


def test_uncertain_labels_read_as_unknown_and_left_out_of_losses_measures_and_votes(tmp_path, datasets):
    listed, marks = findings_list(tmp_path, datasets, count=3)
    cfg = DataConfig(name="csv", path=str(listed), multi_label=True, label_columns=FINDINGS, uncertain_label="ignore")
    rows = rows_of(build_source(cfg, "train", 3))
    want = np.where(marks[:6] < 0, np.nan, marks[:6]).astype(np.float32)
    np.testing.assert_array_equal(rows, want)  # nan where -1, as equal
    with pytest.raises(ConfigError, match=r"data.uncertain_label='ignore' is invalid: .*data.multi_label=true"):
        load_config(LinprobeConfig, overrides=["data.name=csv", f"data.path={listed}", "data.uncertain_label=ignore",
                                               "data.label_columns=[Edema,Effusion,Mass]"])

    # the loss: binary cross-entropy over the known entries only; no gradient reaches an unknown one
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, generator=g, requires_grad=True)
    targets = torch.from_numpy(rows)
    known = ~targets.isnan()
    loss = row_loss(logits, targets)
    assert loss.item() == pytest.approx(F.binary_cross_entropy_with_logits(logits[known], targets[known]).item(),
                                        rel=1e-6)
    loss.backward()
    assert (logits.grad[~known] == 0).all() and (logits.grad[known] != 0).all()
    whole = torch.rand(6, 3, generator=g).round()
    assert row_loss(logits, whole).item() == pytest.approx(F.binary_cross_entropy_with_logits(logits, whole).item(),
                                                           rel=1e-6)
    for i in range(6):  # each image's loss: over its known classes; a test-time flip's averaged probabilities too
        mine = known[i]
        assert image_losses(logits, targets)[i].item() == pytest.approx(F.binary_cross_entropy_with_logits(
            logits[i, mine], targets[i, mine]).item(), rel=1e-6)
        probs = logits.sigmoid() * 0.9
        assert image_losses(logits, targets, probs)[i].item() == pytest.approx(F.binary_cross_entropy(
            probs[i, mine], targets[i, mine]).item(), rel=1e-6)
    # class weights count each class's positives against its known negatives
    balance = ClassBalance(targets, 3, "balanced")
    positives, negatives = (targets == 1).sum(0).double(), (targets == 0).sum(0).double()
    torch.testing.assert_close(balance.pos_weight, negatives / positives)
    assert balance.loss(logits, targets).item() == pytest.approx(F.binary_cross_entropy_with_logits(
        logits[known], targets[known], pos_weight=(negatives / positives).float().expand(6, 3)[known]).item(),
        rel=1e-6)
    # mixing: unmixed rows keep their known labels; a label mixed with an unknown one is unknown
    assert torch.equal(mixed_rows(targets, 1.0, 0.0).isnan(), ~known)
    mixed = mixed_rows(targets, 0.7, 0.1)
    assert torch.equal(mixed.isnan(), ~known | ~known.flip(0))
    both = known & known.flip(0)
    torch.testing.assert_close(mixed[both], ((targets * 0.9 + 0.05) * 0.7 + (targets.flip(0) * 0.9 + 0.05) * 0.3)[both])

    # the measures: each class on its known images; exact match over each image's known labels
    probs = torch.rand(6, 3, generator=g).numpy()
    scores = multilabel_scores(probs, rows, per_class=True)
    ap = [average_precision(probs[known[:, c].numpy(), c], rows[known[:, c].numpy(), c] > 0.5) for c in range(3)]
    auc = [roc_auc(probs[known[:, c].numpy(), c], rows[known[:, c].numpy(), c] > 0.5) for c in range(3)]
    assert scores["mean_ap"] == pytest.approx(100 * np.nanmean(ap))
    assert scores["roc_auc"] == pytest.approx(100 * np.nanmean(auc))
    exact = [all((probs[i, c] > 0.5) == (rows[i, c] > 0.5) for c in range(3) if known[i, c]) for i in range(6)]
    assert scores["exact_match"] == pytest.approx(100 * np.mean(exact))
    assert scores["per_class_images"] == [int((rows[:, c] == 1).sum()) for c in range(3)]
    nothing = rows.copy()
    nothing[:, 2] = np.nan  # a class of no known label: not measured, not in the means
    assert multilabel_scores(probs, nothing, per_class=True)["per_class_ap"][2] is None

    # kNN: a class's share is of the weight of the neighbours that know it; none of them: the training share
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([[1.0, NAN, NAN], [0.0, 1.0, NAN], [1.0, 0.0, NAN]])
    query = torch.tensor([[1.0, 0.0]])
    out = knn_accuracy(train, labels, query, torch.tensor([[1.0, 0.0, 1.0]]), 3, k=3, temperature=0.5)
    near, far, mid = np.exp(2.0), np.exp(0.0), np.exp(np.sqrt(0.5) / 0.5)
    shares = np.array([[(near + mid) / (near + far + mid), far / (far + mid), 0.0]])  # the third: no training share
    want = {f"knn_{k}": v for k, v in multilabel_scores(shares, np.array([[1.0, 0.0, 1.0]])).items()}
    assert out == pytest.approx(want, nan_ok=True)


def test_a_probe_on_uncertain_findings_and_its_evaluation_leave_them_out(tmp_path, datasets, caplog):
    """An online probe of CheXpert-like findings with ``data.uncertain_label=ignore``: finite losses; `openmae
    evaluate` of its model-best.pth gives the run's mean AP, and its predictions CSV names each image's unknown
    classes and counts them out of ``exact``; given the list alone, it reads the labels as the run did."""
    from openmae.cli.main import main
    from openmae.engine.linprobe import linprobe

    listed, marks = findings_list(tmp_path, datasets)
    data = ["model.name=mae_vit_debug_patch4_32", "data.name=csv", f"data.path={listed}", "data.multi_label=true",
            "data.label_columns=[Edema,Effusion,Mass]", "data.uncertain_label=ignore", "data.num_workers=0"]
    result = linprobe(load_config(LinprobeConfig, overrides=[
        *data, "linprobe.mode=online", "linprobe.class_weights=balanced", "train.epochs=2", "train.warmup_epochs=0",
        "train.batch_size=8", "train.progress=false", "train.tensorboard=false",
        f"train.output_dir={tmp_path / 'probe'}"]))
    records = [json.loads(line) for line in (tmp_path / "probe" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses and all(np.isfinite(losses)) and np.isfinite(result["best_mean_ap"])
    best = max((r for r in records if "mean_ap" in r), key=lambda r: r["mean_ap"])

    preds = tmp_path / "preds.csv"
    code = main(["evaluate", "--checkpoint", str(tmp_path / "probe" / "model-best.pth"), *data[1:],
                 "-o", str(tmp_path / "eval.json"), "--predictions", str(preds)])
    assert code == 0
    got = json.loads((tmp_path / "eval.json").read_text())
    for key in ("mean_ap", "roc_auc", "exact_match", "eval_loss", "ece"):
        assert got[key] == pytest.approx(best[key], abs=1e-4), key
    rows = list(csv.DictReader(preds.open()))
    test_marks = marks[20:]
    assert [r["unknown"] for r in rows] == ["|".join(f for f, m in zip(FINDINGS, row) if m < 0) for row in test_marks]
    assert [r["labels"] for r in rows] == ["|".join(f for f, m in zip(FINDINGS, row) if m > 0) for row in test_marks]
    assert 100.0 * sum(int(r["exact"]) for r in rows) / len(rows) == pytest.approx(got["exact_match"])
    probs = np.array([[float(r[f"p_{f}"]) for f in FINDINGS] for r in rows])  # each known pair's calibration
    assert got["ece"] == pytest.approx(multilabel_calibration(probs, np.where(test_marks < 0, np.nan, test_marks))["ece"],
                                       abs=1e-3)
    # given the list alone, evaluate reads its labels as the run read them (its columns, -1 left out)
    code = main(["evaluate", "--checkpoint", str(tmp_path / "probe" / "model-best.pth"), "--data", str(listed),
                 "data.num_workers=0", "-o", str(tmp_path / "again.json")])
    assert code == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert {k: again[k] for k in ("mean_ap", "eval_loss", "samples")} == {k: got[k] for k in ("mean_ap", "eval_loss",
                                                                                            "samples")}
    # a file that records none (written before, or by another program) leaves the settings as given, unsaid
    import logging

    from openmae.engine.evaluate import _read_labels_as_trained

    given = DataConfig(name="csv", path=str(listed), multi_label=True)
    with caplog.at_level(logging.INFO, logger="openmae"):
        _read_labels_as_trained(given, {"model": {}}, "old.pth")
    assert given.label_columns == () and "labels read as" not in caplog.text
