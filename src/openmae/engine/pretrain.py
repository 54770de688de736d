"""Pretraining task: MAE reconstruction loss, masks drawn from each sample's own seed."""

from __future__ import annotations

import logging
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from openmae.config import ConfigError
from openmae.convert.checkpoints import load_state_dict_into
from openmae.data.build import eval_batches, require_eval_folder, source_for, split_sources, train_dataset
from openmae.data.datasets import ImageSource, keep_stats, stats_for
from openmae.data.labels import holds_split
from openmae.data.loader import Batch
from openmae.data.ranks import shared_by_ranks
from openmae.engine.config import TrainConfig
from openmae.engine.distributed import ONE_PROCESS, DistInfo, wait_for_main
from openmae.engine.evaluate_reconstruction import errors_over_ranks
from openmae.engine.knn_eval import knn_over_ranks
from openmae.engine.loop import Run, StepOutput, launch
from openmae.engine.optim import param_groups
from openmae.engine.precision import autocast_dtype
from openmae.engine.task_config import PretrainConfig
from openmae.engine.train_state import refuse_other_tuning
from openmae.engine.weights import resolve_encoder
from openmae.eval.reconstruction import auto_scale, check_bands, grid_image, reconstruct, save_grid
from openmae.eval.typicality import Reference
from openmae.models.freezing import tune_encoder_blocks
from openmae.models.mae import DECODER_PREFIXES, MaskedAutoencoder
from openmae.models.vit import pooled_by_fc_norm

log = logging.getLogger("openmae.pretrain")


def norm_for_fc_norm(sd: dict[str, torch.Tensor], model: MaskedAutoencoder, init: str,
                     tune_blocks: int | None) -> dict[str, torch.Tensor]:
    """The weights of a classifier fine-tuned with average pooling, for an MAE: its ``fc_norm`` normalised the mean
    patch token, which an MAE has no place for, and it has no final norm of every token (the decoder's input), so
    that norm starts at the model's initialisation (logged); everything else is the classifier's."""
    kept = "a plain standardisation of each token, frozen" if tune_blocks == 0 else "trained with the rest"
    log.warning("%s is a classifier fine-tuned with average pooling: it has no final norm of every token (its fc_norm "
                "normalised the mean patch token and is not read), so the encoder's final norm starts at its "
                "initialisation (%s)", init, kept)
    weights = {k: v for k, v in sd.items() if not k.startswith("fc_norm.")}
    return {**weights, **{f"norm.{k}": v.detach().clone() for k, v in model.norm.state_dict().items()}}


def named_parts(keys: list[str], model: MaskedAutoencoder) -> list[str]:
    """``keys`` with the whole decoder's, when all of them are there, as one item (an encoder-only file's are dozens)."""
    decoder = [k for k in model.state_dict() if k.startswith(DECODER_PREFIXES)]
    if not set(decoder) <= set(keys):
        return keys
    return [f"the decoder ({len(decoder)} tensors)", *(k for k in keys if k not in decoder)]


class PretrainTask:
    name = "pretrain"

    def __init__(self, cfg: PretrainConfig, resumed: dict[str, Any] | None = None) -> None:
        """``resumed``: the model config of the checkpoint the run resumes from (then pretrain.init is not read)."""
        self.cfg = cfg
        model_cfg, sd, old_grid = resolve_encoder(cfg.model, cfg.pretrain.init, resumed, cfg.data)
        self.model = MaskedAutoencoder(model_cfg)
        if sd is not None:
            if pooled_by_fc_norm(sd):
                sd = norm_for_fc_norm(sd, self.model, cfg.pretrain.init, cfg.pretrain.tune_blocks)
            left = load_state_dict_into(self.model, sd)  # raises, naming the keys, when the file does not fit
            if old_grid != model_cfg.grid:  # the tables are fixed, not learned: this grid's own, not a resized one
                self.model.reset_pos_embed()
            log.info("weights from %s%s", cfg.pretrain.init,
                     f"; left at their initialisation: {', '.join(named_parts(left, self.model))}" if left else "")
        self.tune_blocks(cfg.pretrain.tune_blocks)
        self.model_config = self.model.cfg.to_dict()
        # the held-out images' Gaussian of (log loss, log inpainter's error) at the last evaluation: model-last.pth
        # carries it, and `openmae evaluate` measures other images' atypicality against it
        self.reference: dict[str, Any] | None = None
        self.told_no_reference = False
        check_bands(cfg.pretrain.vis_bands, model_cfg.in_chans)  # at the start, not at the first pictures
        if (cfg.pretrain.knn_every_epochs or cfg.pretrain.eval_every_epochs) and not cfg.data.holdout:
            require_eval_folder(cfg.data)  # at the start, not after the first epochs
        keep_stats(cfg.data, model_cfg.in_chans)  # recorded in config.yaml and the checkpoints

    def tune_blocks(self, blocks: int | None) -> None:
        """pretrain.tune_blocks: the decoder with the encoder's last blocks, or alone."""
        trained, total = tune_encoder_blocks(self.model, blocks)
        if blocks is not None and blocks < self.model.cfg.depth:
            what = (f"the encoder's last {blocks} of {self.model.cfg.depth} blocks, its final norm and the decoder train"
                    if blocks else "the encoder is frozen: the decoder alone trains")
            log.info("%s (%s of %s parameters); the rest keeps the weights it starts with", what, f"{trained:,}", f"{total:,}")

    def check_resume(self, state: dict[str, Any], path: Path) -> None:
        """The parameters that train (pretrain.tune_blocks) are those whose optimizer state the checkpoint holds."""
        refuse_other_tuning(state, path, "pretrain", self.cfg.pretrain.tune_blocks)

    def shard_blocks(self) -> list[nn.Module]:
        return [*self.model.blocks, *self.model.decoder_blocks]

    def param_groups(self, train: TrainConfig) -> list[dict]:
        return param_groups(self.model, train.weight_decay)

    def train_data(self, info: DistInfo):
        m = self.model.cfg
        return train_dataset(self.cfg.data, m.img_size, m.in_chans, self.cfg.train.batch_size, self.cfg.train.seed,
                             info.rank, info.world_size)

    def forward(self, model: nn.Module, batch: Batch, device: torch.device) -> StepOutput:
        noise = self.model.seeded_noise(batch.seeds, self.cfg.pretrain.mask_ratio)
        imgs = batch.images.to(device, non_blocking=True)
        out = model(imgs, mask_ratio=self.cfg.pretrain.mask_ratio, noise=noise.to(device, non_blocking=True))
        return StepOutput(out.loss)

    # ------------------------------------------------------------------ monitoring
    # Built at first use and kept: reading them again at every epoch would rescan the
    # folders, minutes on an ImageNet-sized one.
    @cached_property
    def picture_batch(self) -> Batch:
        """The fixed images the reconstruction pictures show (the eval split when there is one, else training)."""
        cfg, m = self.cfg, self.model.cfg
        d = cfg.data
        held = d.name != "folder" and (d.name != "csv" or holds_split(d, d.eval_split))  # a list of training images
        split = d.eval_split if held else d.train_split
        return next(iter(eval_batches(cfg.data, split, m.img_size, m.in_chans, cfg.pretrain.vis_images,
                                      limit=cfg.pretrain.vis_images)))

    @cached_property
    def knn_sources(self) -> tuple[ImageSource, ImageSource]:
        """The kNN monitor's training and evaluation images (pretrain.knn_train_samples / knn_eval_samples)."""
        p = self.cfg.pretrain
        data = replace(self.cfg.data, max_samples=p.knn_train_samples, max_eval_samples=p.knn_eval_samples)
        return split_sources(data, self.model.cfg.in_chans)

    @cached_property
    def held_out(self) -> ImageSource:
        """The images the reconstruction loss is measured on (pretrain.eval_samples of them, else
        data.max_eval_samples, spread evenly)."""
        d = self.cfg.data
        return source_for(d, d.eval_split, self.model.cfg.in_chans, self.cfg.pretrain.eval_samples or d.max_eval_samples)

    def reconstruction(self, info: DistInfo = ONE_PROCESS) -> dict[str, float]:
        """``eval_loss`` (and ``eval_psnr``; ``eval_pixel_loss`` the squared error of the removed pixels,
        ``eval_inpainting_loss`` a blur's, ``eval_relative_loss`` the mean of the images' ratios of the two) of the
        held-out images, the same on every rank (each rank of a torchrun job measures its part; under FSDP each
        forward is a collective, and every rank runs as many)."""
        cfg = self.cfg
        with shared_by_ranks(info.rank, info.world_size):  # a survey of volumes is split between the ranks
            source = self.held_out
        amp_dtype = autocast_dtype(cfg.train.precision, next(self.model.parameters()).device, hint=False)
        errors = errors_over_ranks(self.model, source, cfg.data, max(cfg.train.batch_size, 64),
                                   cfg.pretrain.mask_ratio, amp_dtype, info, "reconstruction loss of the held-out images")
        try:  # what `openmae evaluate` measures the atypicality of other images against (model-last.pth carries it)
            fitted = Reference.fit(errors.loss.numpy(), errors.inpainting_loss.numpy())
            self.reference = {**fitted.to_dict(), "mask_ratio": cfg.pretrain.mask_ratio}
        except ConfigError as err:  # too few held-out images, or all alike: none kept, the run goes on
            if not self.told_no_reference:
                log.info("no atypicality reference kept from the held-out images: %s", err)
            self.reference, self.told_no_reference = None, True
        return {f"eval_{key}": value for key, value in errors.summary().items()}

    def extra_state(self) -> dict[str, Any]:
        return {"reference": self.reference} if self.reference is not None else {}

    def load_extra_state(self, state: dict[str, Any], path: Path) -> None:
        self.reference = state.get("reference")

    def pictures(self, run: Run, epoch: int) -> None:
        """Reconstructions of fixed held-out images (the eval split when there is one, else training images)."""
        cfg, m = self.cfg, self.model.cfg
        if not cfg.pretrain.vis_images:
            return
        batch = self.picture_batch
        mean, std = stats_for(cfg.data, m.in_chans)
        rec = reconstruct(self.model, batch.images, mean, std, cfg.pretrain.mask_ratio, seed=0,
                          stretch=cfg.data.reads_arrays)  # on every rank: under FSDP a forward is a collective
        if not run.info.is_main:
            return
        bands = tuple(cfg.pretrain.vis_bands)
        path = save_grid(rec, run.run_dir / "pictures" / f"reconstruction-epoch{epoch:04d}.png", auto_scale(m.img_size),
                         bands)
        run.metrics.image("reconstruction", grid_image(rec, auto_scale(m.img_size), bands=bands), run.step)
        log.info("reconstructions written to %s", path)

    def knn(self, info: DistInfo = ONE_PROCESS) -> dict[str, float]:
        """The kNN monitor's top-1 / top-5, the same on every rank (each rank of a torchrun job computes its part)."""
        cfg, m, p = self.cfg, self.model.cfg, self.cfg.pretrain
        bs = max(cfg.train.batch_size, 256)
        with shared_by_ranks(info.rank, info.world_size):  # a survey of volumes is split between the ranks
            sources = self.knn_sources

        def batches_for(split: str, images: ImageSource):
            return eval_batches(cfg.data, split, m.img_size, m.in_chans, bs, source=images)

        out = knn_over_ranks(self.model, sources, batches_for, (cfg.data.train_split, cfg.data.eval_split),
                             next(self.model.parameters()).device, info, p.knn_pooling, k=p.knn_k,
                             temperature=p.knn_temperature)
        return {name: out[name] for name in out if name.startswith("knn_")}

    def after_epoch(self, run: Run, epoch: int) -> dict[str, Any]:
        """Every rank takes its part (under FSDP each forward is a collective); the main rank writes and logs, last:
        a collective after work of its own would wait for it past the process group's timeout."""
        p, last = self.cfg.pretrain, epoch == self.cfg.train.epochs
        out: dict[str, Any] = {}
        if p.knn_every_epochs and (epoch % p.knn_every_epochs == 0 or last):
            out = self.knn(run.info)
            if run.info.is_main:
                log.info("epoch %d kNN: %s", epoch, ", ".join(f"{k} {v:.2f}" for k, v in out.items()))
        if p.eval_every_epochs and (epoch % p.eval_every_epochs == 0 or last):
            held = self.reconstruction(run.info)
            out.update(held)
            if run.info.is_main:
                log.info("epoch %d held-out reconstruction (%d images): %s", epoch, len(self.held_out),
                         ", ".join(f"{k} {v:.4f}" for k, v in held.items()))
        if (p.vis_every_epochs and epoch % p.vis_every_epochs == 0) or last:
            self.pictures(run, epoch)
        wait_for_main(run.info)
        return out


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Run MAE pretraining as configured (single process, or one rank of a torchrun job)."""
    return launch(lambda info, resume: PretrainTask(cfg, resume.model_config if resume else None), cfg)
