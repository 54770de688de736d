"""Accuracy per epoch of several fine-tuning or probe runs in one figure, with a table of their last and best
epochs printed; reads each run's ``metrics.jsonl`` (a run folder or the file itself).

    python benchmarks/plot_epochs.py "patch 4, 10 ep=runs/fm_p4_ft20" "patch 4, 20 ep=runs/fm_p4c_ft20" \
        -o docs/figures/fashion_mnist_patch4_finetune20.png --title "Fashion-MNIST fine-tuning, test top-1"

The figures of docs/results.md that compare runs made outside the protocol scripts come from this script.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from openmae.engine.logging import read_metrics
from openmae.eval.plots import epoch_curves


def parse_run(spec: str) -> tuple[str, Path]:
    """``label=path`` → (label, path to metrics.jsonl); a folder means its ``metrics.jsonl``."""
    label, sep, path = spec.rpartition("=")
    if not sep or not label:
        raise SystemExit(f"run {spec!r} is not LABEL=PATH; write e.g. \"patch 4=runs/fm_p4_ft20\"")
    metrics = Path(path)
    if metrics.is_dir():
        metrics = metrics / "metrics.jsonl"
    if not metrics.is_file():
        raise SystemExit(f"run {label!r}: no metrics file at {metrics}; give a run folder or its metrics.jsonl")
    return label, metrics


def summary(label: str, records: list[dict[str, Any]]) -> tuple[int, float, float, int]:
    """(epochs evaluated, last top-1, best top-1, best epoch) of one run's evaluation records."""
    evals = [r for r in records if "top1" in r]
    if not evals:
        raise SystemExit(f"run {label!r} has no evaluated epochs (no top1 in its metrics): give a fine-tuning or "
                         "probe run, not a pretraining one")
    best = max(evals, key=lambda r: r["top1"])
    return len(evals), evals[-1]["top1"], best["top1"], best["epoch"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="LABEL=PATH: a run folder or its metrics.jsonl")
    parser.add_argument("-o", "--out", required=True, type=Path, help="figure to write (.png)")
    parser.add_argument("--title", default="top-1 per epoch")
    args = parser.parse_args(argv)
    runs = {label: read_metrics(path) for label, path in map(parse_run, args.runs)}
    print("| run | epochs | last top-1 | best top-1 (epoch) |\n|---|---|---|---|")
    for label, records in runs.items():
        n, last, best, best_epoch = summary(label, records)
        print(f"| {label} | {n} | {last:.2f} | {best:.2f} ({best_epoch}) |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(f"wrote {epoch_curves(runs, args.out, title=args.title)}")


if __name__ == "__main__":
    main()
