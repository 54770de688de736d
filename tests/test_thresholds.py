"""Each class's decision threshold for images of several classes each: fitted to the best F1 on the images a run
chooses model-best.pth on (``eval.multilabel.f1_thresholds``), kept in the file, and used by `openmae evaluate` for
F1 and exact match beside one half's."""

import csv
import json
import logging

import numpy as np
import pytest
from test_multilabel import CLASSES, tagged_list

from openmae.eval.multilabel import f1_thresholds, multilabel_scores


def best_f1(scores: np.ndarray, positive: np.ndarray) -> float:
    """The best F1 (percent) of calling positive the images scored at least t, over every t (brute force)."""
    best = 0.0
    for t in np.unique(scores):
        said = scores >= t
        hit = (said & positive).sum()
        best = max(best, 200.0 * hit / (said.sum() + positive.sum()))
    return best


def test_each_class_threshold_reaches_its_best_f1():
    g = np.random.default_rng(0)
    probs = g.random((60, 4)).astype(np.float32)
    probs[:, 3] = np.round(probs[:, 3], 1)  # ties
    targets = (g.random((60, 4)) < np.array([0.5, 0.1, 0.3, 0.4])).astype(np.float32)
    targets[:, 0] = (probs[:, 0] > 0.7) | (g.random(60) < 0.1)  # a class the probabilities mostly rank
    targets[g.random((60, 4)) < 0.1] = np.nan  # unknown labels: left out
    fitted = f1_thresholds(probs, targets)
    tuned = multilabel_scores(probs, targets, per_class=True, thresholds=fitted)
    half = multilabel_scores(probs, targets, per_class=True)
    for c in range(4):
        known = ~np.isnan(targets[:, c])
        assert tuned["per_class_f1"][c] == pytest.approx(best_f1(probs[known, c], targets[known, c] > 0.5))
        assert tuned["per_class_f1"][c] >= half["per_class_f1"][c]
    assert tuned["macro_f1"] > half["macro_f1"]
    # a class without positive images keeps one half; every image called positive: just below the lowest
    assert f1_thresholds(probs[:, :1], np.zeros((60, 1), np.float32)) == [0.5]
    low = f1_thresholds(np.array([[0.2], [0.3]], np.float32), np.array([[1.0], [1.0]], np.float32))[0]
    assert float(np.float32(0.2)) > low > float(np.float32(0.2)) - 1e-9


def test_a_run_keeps_thresholds_fitted_on_held_out_images_and_evaluate_uses_them(tmp_path, datasets, caplog):
    """A fine-tuning run choosing on held-out training images keeps each class's threshold of the best F1 on them in
    model-best.pth (and where it fitted them) and measures the test split at them every epoch (``test_tuned_*``);
    `openmae evaluate` on the test split measures F1 and exact match at them beside one half's (as the run did), its
    predictions CSV names the classes above them, a timm / Hugging Face folder carries them; evaluated on the
    held-out images themselves their F1 is each class's best there, and it says that this flatters."""
    import torch
    from test_finetune import tiny_finetune

    from openmae.cli.main import main
    from openmae.engine.finetune import finetune

    listed = tagged_list(tmp_path, datasets)
    out = tmp_path / "ft"
    finetune(tiny_finetune(out, datasets, "data.name=csv", f"data.path={listed}", "data.multi_label=true",
                           "data.max_samples=0", "data.max_eval_samples=0", "train.epochs=2", "train.batch_size=8",
                           "data.holdout=0.25", "data.report_eval_split=true"))
    kept = torch.load(out / "model-best.pth", weights_only=True)
    assert len(kept["thresholds"]) == 5 and kept["chosen_on"] == {
        "data": str(listed.resolve()), "split": "train", "holdout": 0.25, "holdout_seed": 0}
    from openmae.convert.summary import format_summary, summarize

    shown = (f"decision thresholds {min(kept['thresholds']):.3g} to {max(kept['thresholds']):.3g}; calibrated at "
             f"temperature {kept['temperature']:.3g})")
    assert shown in format_summary(summarize(out / "model-best.pth"))  # openmae info
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert not any("f1_thresholds" in key for r in logged for key in r)  # kept in the file, not logged

    preds, result = tmp_path / "preds.csv", tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(out / "model-best.pth"), "--data", str(listed),
                 "data.num_workers=0", "-o", str(result), "--predictions", str(preds)]) == 0
    got = json.loads(result.read_text())
    rows = list(csv.DictReader(preds.open()))
    probs = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rows])
    truth = np.array([[float(c in r["labels"].split("|")) for c in CLASSES] for r in rows])
    want = multilabel_scores(probs, truth, thresholds=kept["thresholds"])
    chosen = next(r for r in logged if r.get("epoch") == kept["epoch"] and "mean_ap" in r)
    for key in ("macro_f1", "micro_f1", "exact_match"):
        assert got[f"tuned_{key}"] == pytest.approx(want[key], abs=1e-6), key
        # the run measured the test split at the thresholds of its held-out images every epoch: the same numbers
        assert chosen[f"test_tuned_{key}"] == pytest.approx(got[f"tuned_{key}"], abs=1e-6), key
    # so with the temperature fitted on the held-out images: kept in the file, the test split's ECE and loss at it
    assert kept["temperature"] == chosen["temperature"] == got["temperature"]
    for key in ("scaled_ece", "scaled_eval_loss"):
        assert chosen[f"test_{key}"] == pytest.approx(got[key], abs=1e-5), key
    assert got["thresholds"] == dict(zip(CLASSES, kept["thresholds"]))
    for r in rows:
        assert r["tuned"] == "|".join(c for c, t in zip(CLASSES, kept["thresholds"]) if float(r[f"p_{c}"]) > t)
    assert 100.0 * sum(int(r["tuned_exact"]) for r in rows) / len(rows) == pytest.approx(got["tuned_exact_match"])
    assert main(["evaluate", "--checkpoint", str(out / "model-best.pth"), "--data", str(listed), "data.num_workers=0",
                 "evaluate.thresholds=half", "-o", str(result)]) == 0
    assert not any(key.startswith("tuned_") for key in json.loads(result.read_text()))
    # a timm / Hugging Face folder carries them (config.json's decision_thresholds) and evaluates alike
    from transformers import AutoConfig

    from openmae.convert.export import convert_file

    folder = convert_file(out / "model-best.pth", tmp_path / "hf", "hf")
    assert AutoConfig.from_pretrained(folder).decision_thresholds == pytest.approx(kept["thresholds"])
    assert AutoConfig.from_pretrained(folder).calibration_temperature == kept["temperature"]
    assert main(["evaluate", "--checkpoint", str(folder), "--data", str(listed), "data.num_workers=0",
                 "-o", str(tmp_path / "folder.json")]) == 0
    from_folder = json.loads((tmp_path / "folder.json").read_text())
    assert from_folder["tuned_macro_f1"] == pytest.approx(got["tuned_macro_f1"], abs=1e-4)
    assert from_folder["scaled_ece"] == pytest.approx(got["scaled_ece"], abs=1e-4)

    # on the held-out images the thresholds were fitted on: each class's best F1 there, and a warning
    with caplog.at_level(logging.INFO, logger="openmae"):
        assert main(["evaluate", "--checkpoint", str(out / "model-best.pth"), "--data", str(listed),
                     "data.num_workers=0", "data.holdout=0.25", "-o", str(result), "--predictions", str(preds)]) == 0
    assert "fitted on these very images" in caplog.text
    got = json.loads(result.read_text())
    rows = list(csv.DictReader(preds.open()))
    for c in CLASSES:
        scores = np.array([float(r[f"p_{c}"]) for r in rows])
        positive = np.array([c in r["labels"].split("|") for r in rows])
        if positive.any():
            assert got["per_class_tuned_f1"][c] == pytest.approx(best_f1(scores, positive), abs=1e-6), c
