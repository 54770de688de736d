"""Figures a person would rather look at than read: loss curves, accuracy per epoch, accuracy-vs-setting plots,
confusion matrices and precision-recall curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def loss_curve(records: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Training loss against optimizer step, from ``metrics.jsonl`` records; with the evaluations' ``eval_loss`` (a
    pretraining run's held-out reconstruction loss, a classifier's on its evaluation images) as points."""
    rows = [(r["step"], r["loss"]) for r in records if "loss" in r]
    held = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r and "step" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    if rows:
        steps, losses = zip(*rows)
        ax.plot(steps, losses, lw=1.2, label="training loss")
    if held:
        steps, losses = zip(*held)
        ax.plot(steps, losses, marker="o", ms=3.5, lw=1.2, label="evaluation loss (eval_loss)")
        ax.legend(fontsize=8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title or "training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def epoch_curves(runs: dict[str, list[dict[str, Any]]], path: str | Path, title: str = "") -> Path:
    """Evaluated top-1 against epoch, one line per run, from each run's ``metrics.jsonl`` records."""
    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=120)
    for label, records in runs.items():
        rows = [(r["epoch"], r["top1"]) for r in records if "top1" in r]
        if rows:
            epochs, top1 = zip(*rows)
            ax.plot(epochs, top1, marker="o", ms=2.5, lw=1.2, label=f"{label} (last {top1[-1]:.2f})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def setting_curve(xs: list[float], series: dict[str, list[float | list[float]]], path: str | Path, xlabel: str,
                  ylabel: str = "top-1 accuracy (%)", title: str = "") -> Path:
    """One line per metric against a setting (an ablation such as the mask ratio). A point given as a list of
    values (one per seed) is drawn at their mean with a bar from the lowest to the highest."""
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for label, points in series.items():
        runs = [p if isinstance(p, list) else [p] for p in points]
        means = [sum(r) / len(r) for r in runs]
        spread = [[m - min(r) for m, r in zip(means, runs)], [max(r) - m for m, r in zip(means, runs)]]
        ax.errorbar(xs, means, yerr=spread if any(len(r) > 1 for r in runs) else None, marker="o", capsize=3,
                    label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xticks(xs)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def confusion_plot(confusion: list[list[int]], classes: list[str], path: str | Path, title: str = "") -> Path:
    """The confusion matrix with each row (true class) as percentages of that class's images, the counts written
    in the cells that hold any."""
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n), dpi=120)
    shares = [[100.0 * c / max(sum(row), 1) for c in row] for row in confusion]
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=100)
    for i, row in enumerate(confusion):
        for j, count in enumerate(row):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                        color="white" if shares[i][j] > 50 else "black")
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (row: % of the class)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def precision_recall_plot(probs: np.ndarray, truth: np.ndarray, classes: list[str], path: str | Path,
                          title: str = "") -> Path:
    """Each class's precision against recall (a classifier of several classes an image: ``probs`` and ``truth``
    (N, classes)), named with its average precision; classes without positive images are left out, and the legend
    past 20 classes."""
    from openmae.eval.multilabel import average_precision, precision_recall

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    for c, name in enumerate(classes):
        positive = truth[:, c] > 0.5
        if positive.any():
            precision, recall = precision_recall(probs[:, c], positive)
            ax.step(np.r_[0.0, recall], np.r_[precision[0], precision], where="pre", lw=1.0,
                    label=f"{name} (AP {100 * average_precision(probs[:, c], positive):.1f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(classes) <= 20:
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def principal_axes(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Principal component analysis of ``feats`` (N, D): their mean (D,), the components (min(N, D), D), largest
    first, each signed so that its largest loading is positive (the same for the same features), and the share of
    the variance each explains. (NumPy's SVD of the centred rows: no scikit-learn for three lines.)"""
    mean = feats.astype(np.float64).mean(0)
    _, values, directions = np.linalg.svd(feats.astype(np.float64) - mean, full_matrices=False)
    directions *= np.sign(directions[np.arange(len(directions)), np.abs(directions).argmax(1)])[:, None]
    power = values**2
    return mean, directions, power / max(power.sum(), 1e-300)


def principal_map(feats: np.ndarray, most: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """The first two principal components of ``feats`` (N, D) for at most ``most`` of them, spread evenly: their
    coordinates (n, 2) and which rows they are (n,)."""
    rows = np.unique(np.linspace(0, len(feats) - 1, min(most, len(feats))).round().astype(np.int64))
    mean, directions, _ = principal_axes(feats[rows])
    return (feats[rows].astype(np.float64) - mean) @ directions[:2].T, rows


def embedding_plot(feats: np.ndarray, labels: np.ndarray | None, classes: list[str], path: str | Path,
                   title: str = "") -> Path:
    """The images' map: their features' first two principal components (at most 20,000 images), coloured by class
    (several classes an image: by the first); the legend up to 20 classes."""
    xy, rows = principal_map(feats)
    fig, ax = plt.subplots(figsize=(6, 5), dpi=120)
    if labels is None or not classes:
        ax.scatter(xy[:, 0], xy[:, 1], s=3, alpha=0.5, lw=0)
    else:
        picked = labels[rows]
        first = picked if picked.ndim == 1 else np.where((picked > 0.5).any(1), (picked > 0.5).argmax(1), -1)
        colours = plt.get_cmap("tab20" if len(classes) > 10 else "tab10")
        for c, name in enumerate(classes):
            here = first == c
            if here.any():
                ax.scatter(xy[here, 0], xy[here, 1], s=3, alpha=0.6, lw=0, color=colours(c % colours.N), label=name)
        if len(classes) <= 20:
            ax.legend(fontsize=7, markerscale=4, loc="best")
    ax.set_xlabel("first principal component")
    ax.set_ylabel("second principal component")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def reliability_plot(bins: dict[str, list], path: str | Path, title: str = "") -> Path:
    """A reliability diagram: each confidence bin's accuracy (bars) against its mean confidence (the diagonal is a
    calibrated classifier), the bins' share of the images beneath (:func:`openmae.eval.calibration.calibration_bins`)."""
    count = np.asarray(bins["count"], dtype=np.float64)
    width = 1.0 / len(count)
    left = np.arange(len(count)) * width
    acc, conf = np.nan_to_num(np.asarray(bins["accuracy"])), np.nan_to_num(np.asarray(bins["confidence"]))
    fig, (ax, below) = plt.subplots(2, 1, figsize=(5, 5.5), dpi=120, sharex=True, height_ratios=(3, 1))
    ax.bar(left, acc, width, align="edge", edgecolor="black", lw=0.5, label="accuracy")
    ax.bar(left, conf - acc, width, bottom=acc, align="edge", color="tab:red", alpha=0.3, lw=0, label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    below.bar(left, count / max(count.sum(), 1.0), width, align="edge", color="grey")
    below.set_xlabel("confidence")
    below.set_ylabel("share")
    below.set_xlim(0, 1)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
