"""Linear probing: frozen encoder, BatchNorm1d(affine=False) + Linear head on the cls token, LARS.

``mode=online`` trains the head on augmented images through the frozen encoder (the paper's protocol);
``mode=cached`` extracts features once (no augmentation) and trains the head on them: far cheaper, and
the results say which mode produced them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from openmae.config import to_dict
from openmae.data.build import (
    SourceView,
    eval_batches,
    labels_of,
    report_source,
    split_sources,
    train_dataset,
)
from openmae.data.datasets import ImageSource, keep_stats
from openmae.data.loader import Batch, ResumableSampler, SeededSamples, class_balanced
from openmae.data.normalization import stats_record
from openmae.engine.classifier import (
    BestKeeper,
    data_record,
    evaluate_after_epoch,
    evaluate_share,
    fitted_on_held_out,
    labels_and_images,
    num_classes_of,
    report_prefix,
    say_labels,
)
from openmae.engine.config import TrainConfig, measure_to_select
from openmae.engine.distributed import ONE_PROCESS, DistInfo, gather_rows, gather_stacked, part_of
from openmae.engine.imbalance import class_balance
from openmae.engine.loop import Run, StepOutput, launch
from openmae.engine.optim import param_groups
from openmae.engine.precision import autocast_dtype
from openmae.engine.row_loss import row_loss
from openmae.engine.task_config import LinprobeConfig
from openmae.engine.weights import resolve_encoder
from openmae.eval.feature_cache import feature_key, read_features, say_read, weights_digest, write_features
from openmae.eval.features import extract_features, pooled_norm, pooled_width
from openmae.models.vit import create_classifier, load_encoder, pooled_by_fc_norm

log = logging.getLogger("openmae.linprobe")


class FeatureSource:
    """Cached features as a dataset: ``load(i) -> (feature (D,), label)``."""

    def __init__(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        self.feats, self.labels, self.classes = feats, labels, []

    def __len__(self) -> int:
        return len(self.feats)

    def load(self, index: int):
        label = self.labels[index]  # a class index, or a row of 0 / 1 (data.multi_label)
        return self.feats[index], label.numpy() if label.ndim else int(label)

    def describe(self, index: int) -> str:
        return f"cached feature {index}"


class LinprobeTask:
    name = "linprobe"

    def __init__(self, cfg: LinprobeConfig, device: torch.device, resumed: dict[str, Any] | None = None,
                 info: DistInfo = ONE_PROCESS) -> None:
        """``resumed``: the model config of the checkpoint the run resumes from. An online probe's checkpoints hold
        its frozen encoder, so linprobe.init is not read then; a cached probe's hold its head alone, and its features
        are computed from linprobe.init again (each rank of a torchrun job ``info`` computing its part of them)."""
        self.cfg, self.device, self.info = cfg, device, info
        p = cfg.linprobe
        try:
            mae_cfg, sd, old_grid = resolve_encoder(cfg.model, p.init, resumed if p.mode == "online" else None,
                                                    data=cfg.data)
        except FileNotFoundError as err:
            if resumed is None:
                raise
            raise FileNotFoundError(f"{err}: a cached probe that resumes computes its features from linprobe.init "
                                    "again (its checkpoints keep the head alone); put the file back, or give its new "
                                    "place in linprobe.init (an online probe, linprobe.mode=online, keeps its encoder "
                                    "in its checkpoints)") from None
        self.mae_cfg, self.model_config = mae_cfg, mae_cfg.to_dict()
        self.amp_dtype = autocast_dtype(cfg.train.precision, device)
        self.train_source, self.eval_source = split_sources(cfg.data, mae_cfg.in_chans)
        self.report_source = report_source(cfg.data, mae_cfg.in_chans)  # the test split beside held-out images
        keep_stats(cfg.data, mae_cfg.in_chans)  # recorded in config.yaml and the checkpoints
        self.num_classes = num_classes_of(p.num_classes, self.train_source.classes)
        # online: the head reads the pooling asked for (mean: normed patch tokens averaged, as cached features are);
        # a classifier fine-tuned with average pooling: fc_norm of the mean patch token, as its own head read it
        by_fc_norm = sd is not None and pooled_by_fc_norm(sd)
        self.classifier = create_classifier(mae_cfg, self.num_classes, probe_global_pool(p.pooling), bn_head=True,
                                            head_init_std=0.01, fc_norm=by_fc_norm,
                                            head_in=pooled_width(p.pooling, mae_cfg.embed_dim) * p.last_blocks)
        if by_fc_norm:
            pooled_norm(self.classifier, p.pooling, p.last_blocks)  # the poolings it has features for
            if p.mode == "online":  # its checkpoints and model-best.pth would hold a classifier no reader builds
                raise ValueError(f"{p.init} is a classifier fine-tuned with average pooling: probe its features "
                                 "cached (linprobe.mode=cached linprobe.pooling=mean)")
        if sd is not None:
            load_encoder(self.classifier, sd, mae_cfg.grid, old_grid)
        for name, param in self.classifier.named_parameters():
            param.requires_grad = name.startswith("head.")
        self.classes = list(self.train_source.classes)  # the outputs' names, in the files it writes
        self.best = BestKeeper(Path(cfg.train.output_dir), self.model_config,
                               {"num_classes": self.num_classes, "mode": p.mode, "last_blocks": p.last_blocks,
                                "pooling": p.pooling, "normalization": stats_record(cfg.data),
                                "classes": self.classes, "multi_label": cfg.data.multi_label,
                                **data_record(cfg.data)},
                               report_prefix(cfg.data), measure_to_select(p.select_by, cfg.data.multi_label))
        say_labels(cfg.data.multi_label, self.num_classes, self.best.select_by)
        if p.mode == "cached":
            self.weights = weights_digest(self.classifier) if p.feature_cache else ""  # the kept features' key
            self.classifier.to(device)
            self.train_feats = self._features("train", cfg.data.train_split, self.train_source)
            self.eval_feats = self._features("eval", cfg.data.eval_split, self.eval_source)
            self.report_feats = (self._features("report", cfg.data.eval_split, self.report_source)
                                 if self.report_source is not None else None)
            self.model = self.classifier.head  # only the head trains; features come from the cache
            self.num_workers = 0  # in-memory tensors: worker processes would only add overhead
        else:
            self.train_feats = self.eval_feats = self.report_feats = None
            self.model = self.classifier
            self.num_workers = cfg.data.num_workers
        # class weights / logit adjustment for imbalanced classes, from the training labels (None: off)
        self.balance = class_balance(lambda: self.train_feats[1] if self.train_feats is not None else
                                     labels_of(self.train_source), self.num_classes, p.class_weights,
                                     p.logit_adjustment, names=self.classes)

    def _features(self, role: str, split: str, source: ImageSource) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (N, D) and labels (N,) of every image of ``source``, on every rank (each computes its part), or
        those an earlier probe kept in linprobe.feature_cache (read when every rank finds them)."""
        p = self.cfg.linprobe
        if not p.feature_cache:
            return self._compute_features(split, source)
        key = feature_key(role, split, source, self.weights, self.model_config, to_dict(self.cfg.data),
                          pooling=p.pooling, last_blocks=p.last_blocks, precision=str(self.amp_dtype))
        kept = read_features(p.feature_cache, key)
        if self.info.enabled:  # all read them, or all compute them (a collective each batch)
            kept = kept if int(gather_stacked(torch.tensor([int(kept is not None)]), self.info).min()) else None
        if kept is not None:
            say_read(p.feature_cache, key, len(kept[0]))
            return kept
        feats = self._compute_features(split, source)
        if self.info.is_main:
            write_features(p.feature_cache, key, *feats)
        return feats

    def _compute_features(self, split: str, source: ImageSource) -> tuple[torch.Tensor, torch.Tensor]:
        m, bs, info = self.mae_cfg, self.cfg.linprobe.eval_batch_size, self.info
        p = self.cfg.linprobe
        part = part_of(source, info)[0]
        feats = extract_features(self.classifier, eval_batches(self.cfg.data, split, m.img_size, m.in_chans, bs,
                                                               source=part),
                                 self.device, p.pooling, self.amp_dtype, last_blocks=p.last_blocks,
                                 what=f"probe features of the {split} images", total=len(part))
        feats = tuple(gather_rows(part, len(source), info) for part in feats)
        log.info("cached %d %s features of width %d", len(feats[0]), split, feats[0].shape[1])
        return feats

    def shard_blocks(self) -> list[nn.Module]:
        return []

    def param_groups(self, train: TrainConfig) -> list[dict]:
        return param_groups(self.model, train.weight_decay)

    def train_data(self, info: DistInfo):
        d, m, t = self.cfg.data, self.mae_cfg, self.cfg.train
        if self.cfg.linprobe.mode == "cached":
            weights = class_balanced(self.train_feats[1], self.classes) if d.balance == "classes" else None
            sampler = ResumableSampler(len(self.train_feats[0]), t.batch_size, t.seed, rank=info.rank,
                                       world_size=info.world_size, weights=weights)
            return SeededSamples(FeatureSource(*self.train_feats), _identity, seeded=False), sampler
        return train_dataset(d, m.img_size, m.in_chans, t.batch_size, t.seed, info.rank, info.world_size,
                             source=self.train_source)

    def forward(self, model: nn.Module, batch: Batch, device: torch.device) -> StepOutput:
        inputs, labels = labels_and_images(batch, device)
        if self.cfg.linprobe.mode == "online":
            self.classifier.eval()  # frozen encoder; only the BatchNorm head is in training mode
            self.classifier.head.train()
        logits = model(inputs).float()  # (B, classes)
        if self.balance is not None:
            return StepOutput(self.balance.loss(logits, labels))
        if labels.ndim == 2:  # several classes an image (data.multi_label): a yes / no each
            return StepOutput(row_loss(logits, labels))
        return StepOutput(nn.functional.cross_entropy(logits, labels))

    def extra_state(self) -> dict[str, Any]:
        return self.best.state()

    def load_extra_state(self, state: dict[str, Any], path: Path) -> None:
        self.best.load_state(state)

    def evaluate(self, info: DistInfo = ONE_PROCESS) -> dict[str, float]:
        """Top-1 etc. on the evaluation images (each rank of a torchrun job evaluating its part of them)."""
        metrics = self._evaluate_on(self.eval_source, self.eval_feats, info)
        if self.report_source is not None:  # also at the temperature (and thresholds) fitted on held-out images
            report = self._evaluate_on(self.report_source, self.report_feats, info, fitted_on_held_out(metrics))
            metrics.update({f"{self.best.report}{k}": v for k, v in report.items()})
        return metrics

    def _evaluate_on(self, source: ImageSource, cached: tuple[torch.Tensor, torch.Tensor] | None,
                     info: DistInfo, fitted: dict[str, Any] | None = None) -> dict[str, float]:
        """Top-1 etc. of the probe on ``source``'s images (or, in cached mode, on their ``cached`` features);
        ``fitted``: a temperature and thresholds fitted on other images (:func:`evaluate`)."""
        bs = self.cfg.linprobe.eval_batch_size
        if cached is not None:
            def feature_batches(items: FeatureSource | SourceView) -> list[Batch]:
                index = items.index if isinstance(items, SourceView) else slice(None)  # a rank's part, or all
                feats, labels = cached[0][index], cached[1][index]  # (n, D), (n,)
                return [Batch(feats[i : i + bs], labels[i : i + bs], labels[i : i + bs], 0)
                        for i in range(0, len(feats), bs)]

            return evaluate_share(self.model, FeatureSource(*cached), feature_batches, self.device, info,
                                  fitted=fitted)
        d, m = self.cfg.data, self.mae_cfg
        return evaluate_share(self.classifier, source,
                              lambda images: eval_batches(d, d.eval_split, m.img_size, m.in_chans, bs, source=images),
                              self.device, info, self.amp_dtype, fitted=fitted)

    def after_epoch(self, run: Run, epoch: int) -> dict[str, Any]:
        p = self.cfg.linprobe
        return evaluate_after_epoch(run, epoch, p.eval_every_epochs, self.classifier, self.evaluate, self.best,
                                    {"mode": p.mode})


def probe_global_pool(pooling: str) -> str:
    """The probe classifier's global_pool for ``linprobe.pooling``: avg (with the final norm before it, fc_norm off)
    for mean features, else the cls token. Only an online head reads it; cached probes pool their features
    themselves."""
    return "avg" if pooling == "mean" else "token"


def _identity(x):
    return x


def linprobe(cfg: LinprobeConfig) -> dict[str, Any]:
    """Linear probe of a pretrained (or random) encoder as configured."""
    return launch(lambda info, resume: LinprobeTask(cfg, info.device, resume.model_config if resume else None,
                                                          info), cfg)
