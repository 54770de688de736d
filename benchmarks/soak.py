"""Soak test: thousands of small CPU pretraining steps; resident memory must stay flat and throughput steady.

    python benchmarks/soak.py --steps 5000 --out /tmp/soak

Samples the resident memory (RSS) of the training process and its loader workers every second and reads the
throughput from the run's metrics.jsonl; prints a JSON summary (RSS drift after warm-up, throughput spread).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tree_rss_mb(pid: int) -> float:
    """RSS of ``pid`` and all its descendants, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, stack = 0.0, [pid]
    while stack:
        p = stack.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:  # the process ended between listing and reading: it holds no memory any more
            continue
        stack += children.get(p, [])
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--out", default="runs/soak")
    parser.add_argument("--data-root", default=os.environ.get("OPENMAE_DATA", str(REPO.parent / "shared" / "datasets")))
    args = parser.parse_args()
    out = Path(args.out)
    per_epoch = 50  # 800 images / batch 16
    epochs = max(1, args.steps // per_epoch)
    cmd = [sys.executable, "-m", "openmae", "pretrain", f"--data-root={args.data_root}", f"-o={out}",
           "model.name=mae_vit_debug_patch4_32", "data.name=cifar10", "data.max_samples=800", "data.num_workers=2",
           f"train.epochs={epochs}", "train.warmup_epochs=1", "train.batch_size=16", "train.log_every_steps=50",
           "train.ckpt_every_epochs=10", "pretrain.vis_every_epochs=20", "pretrain.vis_images=4", "train.progress=false",
           "train.overwrite=true"]  # a soak run again starts over
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples = []
    while proc.poll() is None:
        samples.append((time.time() - start, tree_rss_mb(proc.pid)))
        time.sleep(1.0)
    err = proc.stderr.read()
    if proc.returncode:
        raise SystemExit(f"soak run failed ({proc.returncode}):\n{err[-3000:]}")
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if '"images_per_s"' in ln]
    speeds = [r["images_per_s"] for r in records[2:]]
    warm = [rss for t, rss in samples if t > 0.1 * samples[-1][0]]
    n = max(1, len(warm) // 10)
    summary = {
        "steps": records[-1]["step"], "minutes": round((time.time() - start) / 60, 2),
        "rss_mb_first_10pct_after_warmup": round(statistics.mean(warm[:n]), 1),
        "rss_mb_last_10pct": round(statistics.mean(warm[-n:]), 1),
        "rss_mb_max": round(max(rss for _, rss in samples), 1),
        "images_per_s_median": round(statistics.median(speeds), 1),
        "images_per_s_p10_p90": [round(statistics.quantiles(speeds, n=10)[0], 1),
                                 round(statistics.quantiles(speeds, n=10)[-1], 1)],
        "images_per_s_first_vs_last_quarter": [round(statistics.mean(speeds[: len(speeds) // 4]), 1),
                                               round(statistics.mean(speeds[-len(speeds) // 4 :]), 1)],
    }
    summary["rss_drift_mb"] = round(summary["rss_mb_last_10pct"] - summary["rss_mb_first_10pct_after_warmup"], 1)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
