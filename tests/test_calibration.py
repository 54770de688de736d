"""Expected calibration error (Guo et al. 2017, 15 equal-width bins of confidence) of one class an image (the top
class's probability against being right) and of several (each known image-class pair's probability against its
label), as `openmae evaluate` and every evaluation report it."""

import numpy as np
import pytest

from openmae.eval.calibration import calibration_bins, multilabel_calibration


def test_expected_calibration_error_is_the_binned_gap_between_accuracy_and_confidence():
    # bins of 1/15: 0.95 x2 -> bin 14 (acc 0.5), 0.9 -> 13 (acc 1), 0.55 -> 8 (acc 1), 0.5 -> 7 (acc 0)
    out = calibration_bins(np.array([0.95, 0.95, 0.9, 0.55, 0.5]), np.array([1, 0, 1, 1, 0]))
    assert out["ece"] == pytest.approx(100 * (2 * 0.45 + 0.1 + 0.45 + 0.5) / 5)
    assert out["count"][14] == 2 and out["count"][13] == 1 and out["count"][8] == 1 and out["count"][7] == 1
    assert sum(out["count"]) == 5 and np.isnan(out["accuracy"][0]) and out["accuracy"][14] == 0.5
    # the bins' edges: (0, 1/15] is the first, 1 the last, 0 the first
    edges = calibration_bins(np.array([0.0, 1 / 15, 1 / 15 + 1e-9, 1.0]), np.ones(4))
    assert edges["count"][0] == 2 and edges["count"][1] == 1 and edges["count"][14] == 1
    # right as often as sure: near 0; always wrong at 0.8: 80
    g = np.random.default_rng(0)
    sure = g.random(200_000)
    assert calibration_bins(sure, g.random(200_000) < sure)["ece"] < 0.5
    assert calibration_bins(np.full(10, 0.8), np.zeros(10))["ece"] == pytest.approx(80.0)
    assert np.isnan(calibration_bins(np.zeros(0), np.zeros(0))["ece"])
    # several classes an image: every known pair a yes / no
    probs = np.array([[0.9, 0.2], [0.6, 0.1]])
    rows = np.array([[1.0, np.nan], [0.0, 0.0]])
    assert multilabel_calibration(probs, rows)["ece"] == pytest.approx(
        calibration_bins(np.array([0.9, 0.6, 0.1]), np.array([1, 0, 0]))["ece"])
