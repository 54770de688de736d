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


def test_temperature_scaling_fits_the_grid_minimum_and_measures_at_a_given_one():
    """Each image's NLL at each temperature is the cross-entropy of its logits / T (binary, over known labels, for
    several classes an image); the fitted temperature recovers a known over-confidence; an evaluation given a
    temperature measures ECE and loss at it, fitted the one its images want, as computed by hand."""
    import torch
    import torch.nn.functional as F

    from openmae.data.loader import Batch
    from openmae.engine.classifier import evaluate
    from openmae.eval.temperature import GRID, best_temperature, nll_by_temperature

    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(50, 7, generator=g) * 3, torch.randint(0, 7, (50,), generator=g)
    sums, counts = nll_by_temperature(logits, labels)
    for i in (0, 40, 120):  # summed in float32: logits / 0.05 reach 200, where float32 holds 1e-5
        torch.testing.assert_close(sums[:, i], F.cross_entropy(logits.double() / GRID[i], labels, reduction="none"),
                                   rtol=1e-5, atol=1e-4)
    rows = (torch.rand(50, 7, generator=g) < 0.3).float().masked_fill(torch.rand(50, 7, generator=g) < 0.2, float("nan"))
    sums, counts = nll_by_temperature(logits, rows)
    known = ~rows.isnan()
    assert torch.equal(counts, known.sum(1).double())
    torch.testing.assert_close(sums[:, 60].sum(), F.binary_cross_entropy_with_logits(
        logits[known].double() / GRID[60], rows[known].double(), reduction="sum"), rtol=1e-5, atol=1e-5)

    # labels drawn from softmax(z), the classifier saying 3 z: the fitted temperature is about 3
    z = torch.randn(20000, 10, generator=g) * 1.5
    drawn = torch.multinomial(z.softmax(1), 1, generator=g).squeeze(1)
    assert 2.7 < best_temperature(*nll_by_temperature(3 * z, drawn)) < 3.3

    # an evaluation: the temperature these images want, and ECE / loss at one given
    features = torch.randn(40, 16, generator=g) * 4
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 5)
    targets = torch.randint(0, 5, (40,), generator=g)
    batches = [Batch(features[i : i + 8], targets[i : i + 8], targets[i : i + 8], 0) for i in range(0, 40, 8)]
    out = evaluate(model, batches, torch.device("cpu"), fitted={"temperature": 2.0})
    with torch.no_grad():
        z = model(features)
    assert out["temperature"] == best_temperature(*nll_by_temperature(z, targets))
    scaled = (z / 2).softmax(1)
    assert out["scaled_ece"] == pytest.approx(calibration_bins(scaled.amax(1).numpy(),
                                                               (z.argmax(1) == targets).numpy())["ece"], abs=1e-4)
    assert out["scaled_eval_loss"] == pytest.approx(F.cross_entropy(z / 2, targets).item(), rel=1e-5)
    assert "scaled_ece" not in evaluate(model, batches, torch.device("cpu"))
    # several classes an image
    rows = (torch.rand(40, 5, generator=g) < 0.4).float().masked_fill(torch.rand(40, 5, generator=g) < 0.2, float("nan"))
    batches = [Batch(features[i : i + 8], rows[i : i + 8], rows[i : i + 8], 0) for i in range(0, 40, 8)]
    out = evaluate(model, batches, torch.device("cpu"), fitted={"temperature": 0.5})
    known = ~rows.isnan()
    assert out["temperature"] == best_temperature(*nll_by_temperature(z, rows))
    assert out["scaled_ece"] == pytest.approx(multilabel_calibration((z / 0.5).sigmoid().numpy(), rows.numpy())["ece"],
                                              abs=1e-4)
    per_image = (F.binary_cross_entropy_with_logits(z / 0.5, rows.nan_to_num(0), reduction="none") * known).sum(1) / (
        known.sum(1).clamp_min(1))
    assert out["scaled_eval_loss"] == pytest.approx(per_image.mean().item(), rel=1e-5)


def test_evaluate_says_when_the_temperature_sits_at_the_end_of_the_grid(caplog):
    import logging

    from openmae.engine.evaluate import _say_fitted
    from openmae.eval.temperature import GRID

    for wanted, said in ((float(GRID[0]), True), (float(GRID[60]), False), (float(GRID[-1]), True)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="openmae"):
            _say_fitted({"temperature": wanted, "ece": 3.0, "eval_loss": 0.5}, None, None, None, {})
        assert ("at the end of the range tried (0.05 to 20)" in caplog.text) == said, wanted
