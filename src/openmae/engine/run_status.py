"""``openmae info <run folder>``: where a run stands, read from its files without loading a checkpoint: its task,
whether a process is running it now (the folder's lock), how far it got (``metrics.jsonl``), its checkpoints, its last
evaluation, and the command that continues it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from openmae.convert.summary import TASKS
from openmae.engine.checkpoint import STOPPED, CheckpointManager
from openmae.engine.logging import read_metrics
from openmae.engine.run_lock import held_by

# how the keys an epoch's evaluation logs begin
EVALUATED = ("top", "knn", "eval", "best", "balanced_accuracy", "macro_f1", "roc_auc", "mean_ap", "micro_f1",
             "exact_match")


def is_run_folder(path: str | Path) -> bool:
    """A folder a training command wrote (its ``config.yaml``), not a Hugging Face model folder."""
    path = Path(path)
    return path.is_dir() and (path / "config.yaml").is_file() and not (path / "config.json").is_file()


def run_status(run_dir: str | Path) -> dict[str, Any]:
    """Everything :func:`format_status` prints, as plain data (``openmae info --json``)."""
    run_dir = Path(run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    task = next((t for t in TASKS if t in config), None)
    epochs = (config.get("train") or {}).get("epochs")
    records = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    steps = [r for r in records if "loss" in r and "step" in r]
    evals = [found for r in records if (found := {k: v for k, v in r.items() if k.startswith(EVALUATED)})]
    epoch = max((float(r.get("epoch", 0)) for r in records), default=0.0)
    checkpoints = CheckpointManager(run_dir).list()
    holder = held_by(run_dir)
    try:  # how it stopped on a signal, noted by the training loop (a run cut in its last evaluation logged every step)
        stop = json.loads((run_dir / STOPPED).read_text())
    except (OSError, ValueError):
        stop = None
    if holder:
        state = "running"
    elif epochs is not None and epoch >= epochs and stop is None:
        state = "finished"
    else:
        state = "stopped" if records or checkpoints or stop else "not started"
    last = steps[-1] if steps else None
    return {
        "path": str(run_dir),
        "task": task,
        "state": state,
        "held_by": holder,
        "stopped_by": stop,  # (kept until the run goes on)
        "epoch": epoch,
        "epochs": epochs,
        "step": last["step"] if last else 0,
        "last": {k: last[k] for k in ("time", "loss", "images_per_s") if k in last} if last else None,
        "evaluation": evals[-1] if evals else None,
        "checkpoints": [p.name for p in checkpoints],
        "model_last": (run_dir / "model-last.pth").is_file(),
        "continue": f"openmae {task} -c {run_dir / 'config.yaml'} -o {run_dir} --resume auto" if task else None,
    }


def format_status(status: dict[str, Any]) -> str:
    """The status as lines a person reads."""
    stop = status.get("stopped_by")
    stopped = (f"not running, stopped by {stop['by']} {stop['when']}" if stop else
               "not running, stopped before its last epoch")
    state = {"running": f"running now ({status['held_by']})", "finished": "finished",
             "stopped": stopped, "not started": "not started"}[status["state"]]
    lines = [f"{status['path']}: an openmae {status['task'] or 'training'} run folder, {state}",
             f"  progress: epoch {status['epoch']:.2f} of {status['epochs']}, step {status['step']}"]
    if last := status["last"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last["time"])) if "time" in last else "?"
        lines[-1] += f"; last logged {when}: loss {last['loss']:.4g}" + (
            f", {last['images_per_s']:,.0f} images/s" if "images_per_s" in last else "")
    if evaluation := status["evaluation"]:
        lines.append("  last evaluation: " + ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in evaluation.items()))
    shown = ", ".join(status["checkpoints"][:3]) + (" ..." if len(status["checkpoints"]) > 3 else "")
    lines.append(f"  checkpoints: {shown or 'none'}" + ("; model-last.pth" if status["model_last"] else ""))
    if status["continue"] and status["state"] == "stopped":
        if status["checkpoints"]:
            lines.append(f"  continue it: {status['continue']}")
        elif status["model_last"]:  # --resume auto would refuse to replace it
            lines.append("  no checkpoint to continue from; this starts it over, model-last.pth removed: "
                         + status["continue"].replace("--resume auto", "train.overwrite=true"))
        else:
            lines.append(f"  nothing saved to continue from; this starts it over: {status['continue']}")
    return "\n".join(lines)
