"""Bars of `benchmarks/throughput.py` runs: each implementation's images/s as a multiple of the eager reference of the
same run, one panel per model, one group of bars per run (the JSON lines of each log are read; tables are skipped).

    python benchmarks/throughput.py > run1.log
    python benchmarks/plot_throughput.py "AMX=run1.log" "no AMX=run2.log" -o speedups.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REFERENCES = ("eager fp32 reference", "official-style fp16 eager")


def read_results(path: Path) -> list[dict]:
    """The benchmark results (JSON lines with ``rows``) in a log file."""
    if not path.is_file():
        raise SystemExit(f"no log file at {path}")
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            try:
                result = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "rows" in result:
                out.append(result)
    if not out:
        raise SystemExit(f"{path}: no benchmark results in it (the JSON lines throughput.py prints)")
    return out


def speedups(result: dict) -> dict[str, float]:
    """Each row's images/s over the run's eager reference row."""
    ref = next((r for r in result["rows"] if r["name"] in REFERENCES), None)
    if ref is None:
        raise ValueError(f"{result['preset']}: no eager reference row ({', '.join(REFERENCES)}) to divide by; "
                         "run throughput.py without --no-reference")
    return {r["name"]: r["images_per_s"] / ref["images_per_s"] for r in result["rows"] if r is not ref}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="label=log file of throughput.py")
    parser.add_argument("-o", "--out", default="throughput.png")
    parser.add_argument("--target", type=float, default=2.5, help="a dashed line at this multiple (0: none)")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs: list[tuple[str, list[dict]]] = []
    for spec in args.runs:
        label, sep, path = spec.partition("=")
        if not sep:
            raise SystemExit(f"{spec!r} is not LABEL=PATH: give each run as label=path")
        runs.append((label, read_results(Path(path))))
    presets = list(dict.fromkeys(r["preset"] for _, results in runs for r in results))
    fig, axes = plt.subplots(1, len(presets), figsize=(5.5 * len(presets), 4.2), squeeze=False)
    for ax, preset in zip(axes[0], presets, strict=True):
        groups = [(label, speedups(r)) for label, results in runs for r in results if r["preset"] == preset]
        names = list(dict.fromkeys(n for _, s in groups for n in s))
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            present = [(g + (i - (len(names) - 1) / 2) * width, s[name]) for g, (_, s) in enumerate(groups) if name in s]
            bars = ax.bar([x for x, _ in present], [y for _, y in present], width, label=name)
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        top = max([args.target] + [y for _, s in groups for y in s.values()])
        ax.set_ylim(0, 1.3 * top)  # room for the legend above the bars
        if args.target:
            ax.axhline(args.target, color="grey", linestyle="--", linewidth=1)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(groups)), [label for label, _ in groups], fontsize=8)
        ax.set_title(preset, fontsize=10)
        ax.set_ylabel("images/s over the eager reference of the same run")
        ax.legend(fontsize=7, loc="upper center", ncol=2)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(args.out)


if __name__ == "__main__":
    main()
