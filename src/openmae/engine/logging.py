"""What a user sees and keeps: console logging, a JSON-lines metrics log and TensorBoard scalars/images."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("openmae")


def setup_console(is_main: bool) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(stream=sys.stderr, level=logging.INFO if is_main else logging.WARNING,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


class MetricsLog:
    """``metrics.jsonl`` (one JSON object a line) plus TensorBoard when available; rank 0 only.

    On resume, lines for steps after the checkpoint are dropped so the log reads like one uninterrupted run.
    """

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int | None = None, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.writer = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.info("tensorboard is not installed; metrics go to %s only (pip install openmae[tb])", self.path)
            else:
                self.writer = SummaryWriter(str(run_dir / "tb"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.writer is not None:
            step = record.get("step", 0)
            for key, value in record.items():
                if key not in ("step", "time", "epoch") and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """``image`` (H, W, 3) uint8."""
        if self.enabled and self.writer is not None:
            self.writer.add_image(tag, image, step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]
