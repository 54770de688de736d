"""The steps shared by the real-data protocols (`fashion_mnist.py`, `cifar10.py`, `ablations.py`).

A protocol is a sequence of named steps (pretraining, kNN, cached probe, fine-tuning, pixel baselines); each
result is written to ``<out>/results.json`` as soon as it exists, and a re-run skips the steps already there
(pretraining resumes from its last checkpoint), so a long protocol that was stopped continues where it was.

Probes and fine-tunings are reported at their last epoch: picking the best of the epochs evaluated on the test
split would choose on the test split. The best epoch's top-1 is kept beside it (``best_epoch_top1``), for
comparison with the paper's code, which reports that one. Results files written before this rule
(no ``reported_epoch``) go on reporting the best epoch when continued, so that one file never mixes the two.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from openmae.config import load_config
from openmae.data.build import eval_batches, split_sources
from openmae.data.config import DataConfig
from openmae.engine.finetune import FinetuneConfig, finetune
from openmae.engine.knn_eval import KnnConfig, knn_eval
from openmae.engine.linprobe import LinprobeConfig, linprobe
from openmae.engine.logging import read_metrics
from openmae.engine.pretrain import PretrainConfig, pretrain
from openmae.eval.knn import knn_accuracy

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = os.environ.get("OPENMAE_DATA", str(REPO.parent / "shared" / "datasets"))
QUIET = ["train.progress=false", "train.tensorboard=false"]


def arguments(doc: str, out: str, pretrain_epochs: int, finetune_epochs: int) -> argparse.ArgumentParser:
    """The command-line options every protocol script has."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=out, help="run folder; results.json is written there step by step")
    parser.add_argument("--data-root", default=DEFAULT_ROOT, help="folder holding the named datasets")
    parser.add_argument("--pretrain-epochs", type=int, default=pretrain_epochs)
    parser.add_argument("--finetune-epochs", type=int, default=finetune_epochs)
    parser.add_argument("--smoke", action="store_true", help="tiny budgets, to check the script end to end")
    parser.add_argument("--workers", type=int, default=None,
                        help="data-loader workers for every step (default: each preset's own, 2 for these datasets)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default=None,
                        help="train.precision for pretraining, probes and fine-tuning (default: each preset's own)")
    parser.add_argument("--finetune-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for fine-tuning only, on top of the preset (repeatable), e.g. the recipe of "
                             "earlier runs: --finetune-set data.crop_scale=[0.5,1.0] --finetune-set "
                             "finetune.color_jitter=0.4")
    return parser


def train_overrides(args: argparse.Namespace) -> list[str]:
    """The ``train.*`` settings the common options ask for (``--precision``)."""
    return [] if args.precision is None else [f"train.precision={args.precision}"]


@dataclass
class Protocol:
    """One dataset, one encoder architecture (``model`` overrides), presets for each task."""

    dataset: str
    root: str
    out: Path
    model: list[str]
    pretrain_config: Path
    finetune_config: Path
    probe_config: Path = REPO / "configs/linprobe/small_cached.yaml"
    limit: list[str] = field(default_factory=list)  # data.max_samples / data.max_eval_samples for smoke runs
    eval_limit: list[str] = field(default_factory=list)  # the same for kNN and probes only
    workers: int | None = None  # data.num_workers for every step; None keeps each preset's setting
    train: list[str] = field(default_factory=list)  # train.* overrides for pretraining, probes and fine-tuning
    finetune_set: list[str] = field(default_factory=list)  # on top of finetune_config, for every fine-tuning
    # "last" or "best"; empty: "last" for a new results file, "best" for one written before this choice existed
    # (a script that always reported the last epoch, as eval_select, names "last" and accepts its older files)
    reported_epoch: str = ""
    results: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / "results.json"
        self.results = json.loads(path.read_text()) if path.exists() else {}
        self.results.setdefault("machine", f"{platform.node()}, {os.cpu_count()} cores, torch {torch.__version__}")
        self.results.setdefault("date", time.strftime("%Y-%m-%d"))
        self.results.setdefault("minutes", {})
        self.results.setdefault("settings", {})
        self.results.setdefault("best_epoch_top1", {})
        # a file without the field was written before the choice existed, when the best epoch was reported
        self.results.setdefault("reported_epoch", self.reported_epoch or ("best" if path.exists() else "last"))
        if self.reported_epoch and self.results["reported_epoch"] != self.reported_epoch:
            raise ValueError(f"{path} reports the {self.results['reported_epoch']} epoch, this protocol the "
                             f"{self.reported_epoch}; write to a new --out folder")

    @property
    def data(self) -> list[str]:
        workers = [] if self.workers is None else [f"data.num_workers={self.workers}"]
        return [f"data.name={self.dataset}", f"data.root={self.root}", *workers, *self.limit]

    def step(self, key: str, run: Callable[[], float], settings: list | None = None) -> float:
        """Run ``run`` unless ``key`` already has a result; store the value, its wall time and settings."""
        if key not in self.results:
            timer = time.time()
            self.results[key] = run()
            self.results["minutes"][key] = round((time.time() - timer) / 60, 2)
            if settings is not None:
                self.results["settings"][key] = [str(s) for s in settings]
            self.save()
        print(f"{key}: {self.results[key]:.2f}", flush=True)
        return self.results[key]

    def save(self) -> None:
        path = self.out / "results.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.results, indent=2))
        tmp.replace(path)

    # ------------------------------------------------------------------ tasks
    def pretrain(self, name: str, epochs: int, overrides: list[str] = ()) -> Path:
        """MAE pretraining (resumed when a checkpoint exists); returns the final weights."""
        run_dir = self.out / name
        settings = [self.pretrain_config.relative_to(REPO), *self.model, *self.data, f"train.epochs={epochs}",
                    f"train.warmup_epochs={min(2, epochs)}", *self.train, *overrides]
        cfg = load_config(PretrainConfig, [self.pretrain_config], [
            *self.model, *self.data, f"train.epochs={epochs}", f"train.warmup_epochs={min(2, epochs)}",
            f"train.output_dir={run_dir}", "train.resume=auto", "train.ckpt_every_epochs=1", *QUIET, *self.train,
            *overrides])

        def run() -> float:
            pretrain(cfg)  # a finished run resumed from its last checkpoint returns at once
            losses = [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
            return losses[-1]

        self.step(f"{name}_loss", run, settings)
        return run_dir / "model-last.pth"

    def encoder(self, ckpt: Path | None) -> list[str]:
        return self.model if ckpt is None else []

    def knn(self, key: str, ckpt: Path | None, pooling: str = "mean", last_blocks: int = 1,
            extra: list[str] = ()) -> float:
        overrides = [*self.data, *self.eval_limit, *self.encoder(ckpt), f"knn.pooling={pooling}", f"knn.last_blocks={last_blocks}",
                     f"knn.init={ckpt or ''}", *extra]
        return self.step(key, lambda: knn_eval(load_config(KnnConfig, overrides=overrides))["knn_top1"], overrides)

    def classifier_top1(self, key: str, train: Callable[[], dict]) -> Callable[[], float]:
        """A step that trains a classifier: reports the last epoch's top-1 (the best epoch's in a legacy file)
        and keeps the best epoch's beside it."""
        def run() -> float:
            out = train()
            self.results["best_epoch_top1"][key] = out["best_top1"]
            return out["top1" if self.results["reported_epoch"] == "last" else "best_top1"]

        return run

    def probe(self, key: str, ckpt: Path | None, pooling: str = "mean", last_blocks: int = 1,
              extra: list[str] = ()) -> float:
        """Cached linear probe; its last epoch's top-1."""
        overrides = [*self.data, *self.eval_limit, *QUIET, *self.encoder(ckpt), f"linprobe.pooling={pooling}",
                     f"linprobe.last_blocks={last_blocks}", f"linprobe.init={ckpt or ''}", f"train.output_dir={self.out / key}",
                     "train.overwrite=true", *self.train, *extra]  # a step without a stored result starts over
        cfg = load_config(LinprobeConfig, [self.probe_config], overrides)
        return self.step(key, self.classifier_top1(key, lambda: linprobe(cfg)),
                         [self.probe_config.relative_to(REPO), *overrides])

    def finetune(self, key: str, ckpt: Path | None, epochs: int, overrides: list[str] = ()) -> float:
        """Fine-tuning; its last epoch's top-1."""
        overrides = [*self.data, *QUIET, *self.encoder(ckpt), f"train.epochs={epochs}",
                     f"train.warmup_epochs={min(1, epochs)}", f"finetune.init={ckpt or ''}",
                     f"train.output_dir={self.out / key}", "train.overwrite=true", *self.train, *self.finetune_set,
                     *overrides]
        cfg = load_config(FinetuneConfig, [self.finetune_config], overrides)
        return self.step(key, self.classifier_top1(key, lambda: finetune(cfg)),
                         [self.finetune_config.relative_to(REPO), *overrides])

    def encoder_suite(self, ckpt: Path, last_blocks: int, finetune_epochs: int, img_size: tuple[int, int],
                      channels: int, num_classes: int, smoke: bool, finetune_overrides: list[str] = ()) -> None:
        """Everything a protocol reports for one pretrained encoder: kNN and cached probes (last block, cls
        token, the last ``last_blocks`` blocks) against the same encoder at random init, the raw-pixel
        baselines, and fine-tuning against the same ViT from scratch at the same budget (``finetune_overrides``
        apply to both, e.g. a training subset)."""
        self.knn("knn_mae", ckpt)
        self.knn("knn_mae_cls", ckpt, pooling="cls")
        self.knn(f"knn_mae_last{last_blocks}", ckpt, last_blocks=last_blocks)
        self.knn("knn_random", None)
        self.probe("probe_mae", ckpt)
        self.probe(f"probe_mae_last{last_blocks}", ckpt, last_blocks=last_blocks)
        self.probe("probe_random", None)
        self.probe(f"probe_random_last{last_blocks}", None, last_blocks=last_blocks)
        self.pixel_baselines(img_size, channels, num_classes, smoke)
        self.finetune("finetune_mae", ckpt, finetune_epochs, finetune_overrides)
        self.finetune("finetune_scratch", None, finetune_epochs, finetune_overrides)

    # ------------------------------------------------------------------ baselines on raw pixels
    def pixels(self, img_size: tuple[int, int], channels: int, limits: tuple[int, int] = (0, 0), holdout: float = 0.0,
               ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Raw pixels (N, C * H * W) and labels of the training and test splits, their first ``limits`` images
        (0: all; ``holdout``: the two parts ``data.holdout`` splits the training images into)."""
        data = DataConfig(name=self.dataset, root=self.root, num_workers=2, holdout=holdout, max_samples=limits[0],
                          max_eval_samples=limits[1])
        out = []
        for split, source in zip((data.train_split, data.eval_split), split_sources(data, channels), strict=True):
            batches = list(eval_batches(data, split, img_size, channels, 2000, source=source))
            out.append((torch.cat([b.images.flatten(1) for b in batches]), torch.cat([b.labels for b in batches])))
        return out

    def pixel_baselines(self, img_size: tuple[int, int], channels: int, num_classes: int, smoke: bool) -> None:
        n_train, n_test = (3000, 1000) if smoke else (0, 0)
        missing = "knn_pixels" not in self.results or "logreg_pixels" not in self.results
        # the pixels are read only when a baseline still has to run (``step`` skips the ones already stored)
        (xtr, ytr), (xte, yte) = self.pixels(img_size, channels, (n_train, n_test)) if missing else [(None, None)] * 2
        self.step("knn_pixels", lambda: knn_accuracy(xtr, ytr, xte, yte, num_classes)["knn_top1"])
        self.step("logreg_pixels", lambda: logistic_regression(xtr, ytr, xte, yte, num_classes, 5 if smoke else 100))


def logistic_regression(xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor, yte: torch.Tensor, num_classes: int,
                        epochs: int = 100) -> float:
    """Multinomial logistic regression on raw pixels (Adam, mini-batches of 512, light L2)."""
    gen = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(xtr.shape[1], num_classes)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-3, weight_decay=1e-5)
    for _ in range(epochs):
        for idx in torch.randperm(len(xtr), generator=gen).split(512):
            loss = torch.nn.functional.cross_entropy(layer(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return 100.0 * (layer(xte).argmax(1) == yte).float().mean().item()
