"""The settings of each command (``openmae pretrain``, ``finetune``, ``linprobe``, ``knn``, ``evaluate``): dataclasses
with their defaults and checks, importable without torch, so that the CLI prints, checks and refuses a config at
once; the tasks that run them live beside this module (``engine/pretrain.py`` ...)."""

from __future__ import annotations

from dataclasses import dataclass, field
from math import isqrt
from typing import ClassVar

from openmae.config import require
from openmae.data.config import SHIFT_MODES, DataConfig, check_recipe
from openmae.engine.config import (
    CLASS_WEIGHTS,
    MANY_CLASS_MEASURES,
    ONE_CLASS_MEASURES,
    PRECISIONS,
    SELECT_BY,
    ModelSection,
    TrainConfig,
)
from openmae.models.config import GLOBAL_POOL, POOLING


@dataclass
class PretrainSection:
    """Masking, and what to look at while training (reconstruction pictures, kNN monitor)."""

    mask_ratio: float = 0.75
    # Weights to start from (continued pretraining, e.g. the official ImageNet MAE on your own images), in any
    # layout `openmae convert` reads; an encoder-only file leaves the decoder at its initialisation, and
    # model.name=auto takes the architecture from the file. Optimizer, schedule and step start afresh
    # (train.resume is what continues an interrupted run, and wins over this when it finds a checkpoint).
    init: str = ""
    vis_every_epochs: int = 0
    vis_images: int = 8
    # the channels the pictures show: one (grey) or three (red, green, blue); empty: the first three (or the first
    # when there are fewer). For multi-band data, e.g. [3, 2, 1]: Sentinel-2's true colour
    vis_bands: tuple[int, ...] = ()
    knn_every_epochs: int = 0
    knn_k: int = 20
    knn_temperature: float = 0.07
    knn_pooling: str = "cls"
    knn_train_samples: int = 0
    knn_eval_samples: int = 0
    # Every that many epochs (and at the last; 0 = off), the reconstruction loss of held-out images, which need no
    # labels: the evaluation split, or with data.holdout the held-out part of the training images (an unlabelled
    # folder's only held-out images); logged as eval_loss (the training objective, each image masked alike at every
    # evaluation) and eval_psnr (pixel values in [0, 1]: data.format=image), beside eval_pixel_loss (the squared
    # error of the removed pixels), eval_inpainting_loss (a blur's error of them: the yardstick) and
    # eval_relative_loss (the mean of each image's ratio of the two). A held-out loss that rises while the training
    # loss falls: the model memorises its images (a small set; more epochs will not help it).
    eval_every_epochs: int = 0
    eval_samples: int = 0  # that many of the held-out images, spread evenly (0: data.max_eval_samples; all)
    # Part of the encoder trains, the decoder always: the encoder's last N blocks and its final norm; 0: the encoder
    # is frozen and a decoder learns to reconstruct from its features (a decoder for an encoder-only file, such as the
    # official mae_pretrain_vit_*, to look at its reconstructions; what a frozen encoder's features keep of the
    # pixels); null: the whole encoder (the default). No backward through the frozen blocks: faster steps
    tune_blocks: int | None = None

    def check(self) -> None:
        require(self.tune_blocks is None or self.tune_blocks >= 0, "pretrain.tune_blocks", self.tune_blocks,
                ">= 0 (the encoder's last N blocks train with the decoder; 0: the decoder alone), or null for all")
        require(0 < self.mask_ratio < 1, "pretrain.mask_ratio", self.mask_ratio, "strictly between 0 and 1")
        require(self.vis_every_epochs >= 0, "pretrain.vis_every_epochs", self.vis_every_epochs, ">= 0 (0 = at the end)")
        require(self.vis_images >= 0, "pretrain.vis_images", self.vis_images, ">= 0")
        require(len(self.vis_bands) in (0, 1, 3), "pretrain.vis_bands", self.vis_bands,
                "empty, one channel index (grey) or three (red, green, blue)")
        require(self.knn_every_epochs >= 0, "pretrain.knn_every_epochs", self.knn_every_epochs, ">= 0 (0 = off)")
        require(self.knn_k >= 1, "pretrain.knn_k", self.knn_k, ">= 1")
        require(self.knn_temperature > 0, "pretrain.knn_temperature", self.knn_temperature, "> 0")
        require(self.knn_pooling in POOLING, "pretrain.knn_pooling", self.knn_pooling, f"one of {POOLING}")
        require(self.eval_every_epochs >= 0, "pretrain.eval_every_epochs", self.eval_every_epochs, ">= 0 (0 = off)")
        require(self.eval_samples >= 0, "pretrain.eval_samples", self.eval_samples, ">= 0 (0 = all)")


@dataclass
class PretrainConfig:
    PRESETS: ClassVar[str] = "pretrain"  # its presets' folder (openmae.config.PRESETS)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(output_dir="runs/pretrain"))
    pretrain: PretrainSection = field(default_factory=PretrainSection)

    def check(self) -> None:
        require(self.model.name != "auto" or bool(self.pretrain.init), "model.name", self.model.name,
                "a preset, or auto together with pretrain.init (the architecture is read from that file)")
        require(not (self.pretrain.knn_every_epochs and self.data.name == "folder"), "pretrain.knn_every_epochs",
                self.pretrain.knn_every_epochs, "0 for unlabeled folders (kNN needs labels: use imagefolder or a named set)")
        require(not (self.pretrain.eval_every_epochs and self.data.name == "folder" and not self.data.holdout),
                "pretrain.eval_every_epochs", self.pretrain.eval_every_epochs,
                "0, or a held-out part of the folder to measure on: data.holdout=0.05 (an unlabelled folder has no "
                "evaluation split)")


@dataclass
class FinetuneSection:
    init: str = ""
    num_classes: int = 0
    global_pool: str = "avg"
    drop_path: float = 0.1
    layer_decay: float = 0.75
    smoothing: float = 0.1
    mixup: float = 0.8
    cutmix: float = 1.0
    auto_augment: str = "rand-m9-mstd0.5-inc1"
    reprob: float = 0.25
    # Colour jitter strength when auto_augment is off (timm applies it only then); 0 = none, as the official
    # recipe (which passes None, where timm's own default would be 0.4).
    color_jitter: float = 0.0
    # Random translation by up to this many pixels each way (pad, then crop the image size back), after the crop;
    # shift_mode fills the uncovered border: constant (black), edge or reflect. 0 = none, as the official recipe.
    shift: int = 0
    shift_mode: str = "constant"
    # An exponential moving average of the weights (as DeiT's recipe): when on, the EMA weights are the classifier
    # that is evaluated (top1), kept (model-best.pth) and exported; the trained weights' numbers are logged as
    # live_top1 etc. With the warm-up (timm's), the decay at optimizer step t is min(decay, 1 - (1 + t)^-0.75),
    # so short runs still average over a horizon their length allows.
    model_ema: bool = False
    model_ema_decay: float = 0.9999
    model_ema_warmup: bool = True
    eval_batch_size: int = 256
    eval_every_epochs: int = 1
    # what chooses model-best.pth's epoch: top1, or balanced_accuracy / macro_f1 / roc_auc (imbalanced classes),
    # mean_ap (several classes an image); auto: top1, or mean_ap with data.multi_label
    select_by: str = "auto"
    # imbalanced classes (openmae.engine.imbalance): balanced weighs each class's images by images / (classes x its
    # images) (several classes an image: its positives by negatives / positives); logit_adjustment tau trains on the
    # logits plus tau x log of each class's share (1.0: Menon et al.'s); drawing the classes alike: data.balance
    class_weights: str = "none"
    logit_adjustment: float = 0.0
    # Partial fine-tuning (the paper's section 4.3): only the encoder's last N blocks (with the final norm and the
    # head) train; the patch embedding, position table, cls token and earlier blocks stay as pretrained. Faster per
    # step and lighter in memory (no backward through the frozen blocks); 0: the head and its norm alone (the
    # paper's "0 blocks" is the linear probe: `openmae linprobe`); null: the whole encoder (the default)
    tune_blocks: int | None = None

    def check(self) -> None:
        require(self.tune_blocks is None or self.tune_blocks >= 0, "finetune.tune_blocks", self.tune_blocks,
                ">= 0 (the encoder's last N blocks train), or null to fine-tune everything")
        require(self.select_by in ("auto", *SELECT_BY), "finetune.select_by", self.select_by,
                f"auto or one of {list(SELECT_BY)}")
        check_imbalance("finetune", self.class_weights, self.logit_adjustment)
        require(self.global_pool in GLOBAL_POOL, "finetune.global_pool", self.global_pool, f"one of {GLOBAL_POOL}")
        require(0 <= self.drop_path < 1, "finetune.drop_path", self.drop_path, "in [0, 1)")
        require(0 < self.layer_decay <= 1, "finetune.layer_decay", self.layer_decay, "in (0, 1]")
        require(0 <= self.smoothing < 1, "finetune.smoothing", self.smoothing, "in [0, 1)")
        require(self.mixup >= 0 and self.cutmix >= 0, "finetune.mixup/cutmix", (self.mixup, self.cutmix), ">= 0")
        require(0 <= self.reprob <= 1, "finetune.reprob", self.reprob, "in [0, 1]")
        require(self.color_jitter >= 0, "finetune.color_jitter", self.color_jitter, ">= 0 (0 = no colour jitter)")
        require(self.shift >= 0, "finetune.shift", self.shift, ">= 0 pixels (0 = no random translation)")
        require(self.shift_mode in SHIFT_MODES, "finetune.shift_mode", self.shift_mode, f"one of {SHIFT_MODES}")
        require(self.num_classes >= 0, "finetune.num_classes", self.num_classes, ">= 0 (0 = from the dataset)")
        require(self.eval_every_epochs >= 1, "finetune.eval_every_epochs", self.eval_every_epochs, ">= 1")
        require(0 <= self.model_ema_decay < 1, "finetune.model_ema_decay", self.model_ema_decay,
                "in [0, 1) (0.9999 averages over about 10,000 optimizer steps)")


@dataclass
class FinetuneConfig:
    PRESETS: ClassVar[str] = "finetune"  # its presets' folder (openmae.config.PRESETS)
    model: ModelSection = field(default_factory=lambda: ModelSection(name="auto"))
    data: DataConfig = field(default_factory=lambda: DataConfig(crop_scale=(0.08, 1.0)))  # timm's / the paper's crop
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=100, warmup_epochs=5, blr=5e-4, betas=(0.9, 0.999), output_dir="runs/finetune", ckpt_every_epochs=10))
    finetune: FinetuneSection = field(default_factory=FinetuneSection)

    def check(self) -> None:
        mixing = self.finetune.mixup > 0 or self.finetune.cutmix > 0
        require(not mixing or self.train.batch_size % 2 == 0, "train.batch_size", self.train.batch_size,
                "even when mixup/cutmix are on")
        require(self.data.name != "folder", "data.name", self.data.name, "a labelled dataset (imagefolder or named)")
        require(not self.data.device_augment, "data.device_augment", self.data.device_augment,
                "false for fine-tuning (its RandAugment / random erasing recipe runs in the loader's workers)")
        check_recipe(self.data.format, self.finetune.auto_augment, self.finetune.color_jitter)
        check_select_by("finetune.select_by", self.finetune.select_by, self.data.multi_label)
        check_remedies("finetune", self.finetune.class_weights, self.finetune.logit_adjustment, self.data)
        require(not (self.finetune.model_ema and self.train.distributed == "fsdp"), "finetune.model_ema",
                self.finetune.model_ema, "false with train.distributed=fsdp (the average needs whole weights on "
                "every rank); use ddp")


def check_select_by(name: str, select_by: str, multi_label: bool) -> None:
    """A measure that the evaluation of these labels gives (one class an image, or several)."""
    if multi_label:
        require(select_by not in ONE_CLASS_MEASURES, name, select_by,
                "mean_ap, roc_auc, macro_f1 or auto with data.multi_label=true (top-1 and balanced accuracy measure "
                "one class an image)")
    else:
        require(select_by not in MANY_CLASS_MEASURES, name, select_by,
                "top1, balanced_accuracy, macro_f1, roc_auc or auto: mean_ap measures images of several classes "
                "each (data.multi_label=true)")


def check_imbalance(section: str, class_weights: str, logit_adjustment: float) -> None:
    require(class_weights in CLASS_WEIGHTS, f"{section}.class_weights", class_weights, f"one of {list(CLASS_WEIGHTS)}")
    require(logit_adjustment >= 0, f"{section}.logit_adjustment", logit_adjustment,
            ">= 0 (tau: the logits plus tau x log prior in training; 1.0 is the paper's, 0 off)")


def check_remedies(section: str, class_weights: str, logit_adjustment: float, data: DataConfig) -> None:
    """One remedy for imbalanced classes at a time, and logit adjustment for one class an image."""
    require(not logit_adjustment or not data.multi_label, f"{section}.logit_adjustment", logit_adjustment,
            "0 with data.multi_label=true (it shifts one softmax over the classes; several classes an image: "
            f"{section}.class_weights=balanced)")
    require(data.balance == "none" or (class_weights == "none" and not logit_adjustment), "data.balance", data.balance,
            f"none with {section}.class_weights / logit_adjustment (drawing the classes alike and reweighting or "
            "adjusting the loss for them would count their imbalance twice): choose one")


@dataclass
class LinprobeSection:
    init: str = ""
    num_classes: int = 0
    mode: str = "online"
    pooling: str = "cls"
    last_blocks: int = 1  # cached mode: probe the concatenated pooled features of the last N blocks
    eval_batch_size: int = 256
    eval_every_epochs: int = 1
    # cached mode: a folder where the features are kept, keyed by the encoder's weights, the images and the settings;
    # a later probe of the same (another learning rate, a resumed run) reads them instead of computing them again
    feature_cache: str = ""
    select_by: str = "auto"  # as finetune.select_by
    class_weights: str = "none"  # as finetune.class_weights
    logit_adjustment: float = 0.0  # as finetune.logit_adjustment

    def check(self) -> None:
        require(self.select_by in ("auto", *SELECT_BY), "linprobe.select_by", self.select_by,
                f"auto or one of {list(SELECT_BY)}")
        check_imbalance("linprobe", self.class_weights, self.logit_adjustment)
        require(self.mode in ("online", "cached"), "linprobe.mode", self.mode, "online or cached")
        require(not self.feature_cache or self.mode == "cached", "linprobe.feature_cache", self.feature_cache,
                "empty in online mode (an online probe computes features of augmented images at every step)")
        require(self.pooling in POOLING, "linprobe.pooling", self.pooling, f"one of {POOLING}")
        require(self.last_blocks >= 1, "linprobe.last_blocks", self.last_blocks, ">= 1 (1 = the last block only)")
        require(self.pooling != "cls+mean" or self.mode == "cached", "linprobe.pooling", self.pooling,
                "cls or mean in online mode (the online head reads the cls token; cls+mean is for cached features)")
        require(self.last_blocks == 1 or self.mode == "cached", "linprobe.last_blocks", self.last_blocks,
                "1 in online mode (several blocks are probed from cached features: set linprobe.mode=cached)")
        require(self.num_classes >= 0, "linprobe.num_classes", self.num_classes, ">= 0 (0 = from the dataset)")
        require(self.eval_every_epochs >= 1, "linprobe.eval_every_epochs", self.eval_every_epochs, ">= 1")


@dataclass
class LinprobeConfig:
    PRESETS: ClassVar[str] = "linprobe"  # its presets' folder (openmae.config.PRESETS)
    model: ModelSection = field(default_factory=lambda: ModelSection(name="auto"))
    data: DataConfig = field(default_factory=lambda: DataConfig(crop_scale=(0.08, 1.0)))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=90, warmup_epochs=10, blr=0.1, weight_decay=0.0, optimizer="lars", output_dir="runs/linprobe",
        ckpt_every_epochs=10))
    linprobe: LinprobeSection = field(default_factory=LinprobeSection)

    def check(self) -> None:
        require(self.data.name != "folder", "data.name", self.data.name, "a labelled dataset (imagefolder or named)")
        check_select_by("linprobe.select_by", self.linprobe.select_by, self.data.multi_label)
        check_remedies("linprobe", self.linprobe.class_weights, self.linprobe.logit_adjustment, self.data)


@dataclass
class KnnSection:
    init: str = ""
    k: int = 20
    temperature: float = 0.07
    pooling: str = "cls"
    last_blocks: int = 1  # > 1: concatenate the pooled features of the encoder's last N blocks
    standardize: bool = False  # scale each feature dimension by the training features' mean and std first
    batch_size: int = 256
    device: str = "auto"
    seed: int = 0

    def check(self) -> None:
        require(self.k >= 1, "knn.k", self.k, ">= 1")
        require(self.temperature > 0, "knn.temperature", self.temperature, "> 0")
        check_reading("knn", self.pooling, self.last_blocks, self.batch_size)


def check_reading(section: str, pooling: str, last_blocks: int, batch_size: int) -> None:
    """The settings of a command that reads a frozen encoder's features (kNN, embed)."""
    require(pooling in POOLING, f"{section}.pooling", pooling, f"one of {POOLING}")
    require(batch_size >= 1, f"{section}.batch_size", batch_size, ">= 1")
    require(last_blocks >= 1, f"{section}.last_blocks", last_blocks, ">= 1 (1 = the last block only)")


@dataclass
class KnnConfig:
    model: ModelSection = field(default_factory=lambda: ModelSection(name="auto"))
    data: DataConfig = field(default_factory=DataConfig)
    knn: KnnSection = field(default_factory=KnnSection)

    def check(self) -> None:
        require(self.data.name != "folder", "data.name", self.data.name, "a labelled dataset (imagefolder or named)")
        require(not self.data.report_eval_split, "data.report_eval_split", self.data.report_eval_split,
                "false for kNN (one evaluation, no epoch to choose): run `openmae knn` without data.holdout for the "
                "test split's number")


@dataclass
class EmbedSection:
    init: str = ""  # the encoder (any file or folder the other commands take); empty: a random one
    output: str = "embeddings.safetensors"  # features (N, D) [+ labels]; beside it <stem>.csv: the images in order
    split: str = ""  # which split's images ("": data.train_split; an unlabelled folder has one)
    pooling: str = "cls"
    last_blocks: int = 1  # > 1: the pooled features of the encoder's last N blocks, concatenated
    batch_size: int = 256
    precision: str = "auto"  # as train.precision: auto = bf16 on CUDA (fp16 before Ampere), fp32 on CPU
    device: str = "auto"
    plot: str = ""  # a PNG of the images' map: their first two principal components, coloured by class
    seed: int = 0  # a random encoder's weights (embed.init empty)

    def check(self) -> None:
        require(self.output.endswith(".safetensors"), "embed.output", self.output,
                "a .safetensors file (features, labels; the images' CSV is written beside it)")
        check_reading("embed", self.pooling, self.last_blocks, self.batch_size)
        require(self.precision in ("auto", *PRECISIONS), "embed.precision", self.precision,
                "auto, fp32, bf16 or fp16 (fp16 on CUDA only)")


@dataclass
class EmbedConfig:
    model: ModelSection = field(default_factory=lambda: ModelSection(name="auto"))
    data: DataConfig = field(default_factory=DataConfig)
    embed: EmbedSection = field(default_factory=EmbedSection)

    def check(self) -> None:
        require(not self.data.holdout, "data.holdout", self.data.holdout,
                "0 for embed: it writes every image of a split (embed.split)")


TTA_MODES = ("none", "flip")


@dataclass
class EvaluateSection:
    # the classifier: model-best.pth, or a fine-tuning / online-probe run checkpoint; or a pretrained MAE with its
    # decoder (a pretraining run's model-last.pth, mae_visualize_*.pth, facebook/vit-mae-base), whose reconstruction
    # of the split's images is measured (the loss of the removed patches, PSNR; no labels needed)
    init: str = ""
    batch_size: int = 256
    precision: str = "auto"  # as train.precision: auto = bf16 on CUDA (fp16 before Ampere), fp32 on CPU
    device: str = "auto"
    output: str = ""  # a JSON file for every number (per-class accuracy and confusion matrix included)
    plot: str = ""  # a PNG of the confusion matrix (rows as percentages of each true class); several classes an
    # image (data.multi_label): each class's precision-recall curve; a pretrained MAE: its 8 worst reconstructions
    predictions: str = ""  # a CSV of each image's class, top-5 predictions and their probabilities
    calibration_plot: str = ""  # a PNG of accuracy against confidence (a reliability diagram; its ECE)
    # test-time augmentation: none, or flip (each image's class probabilities averaged with its mirror's; only
    # for classifiers trained with horizontal flips). Reported apart: fine-tuning's own numbers are single-view.
    tta: str = "none"
    # several classes an image: auto also measures F1 and exact match at each class's decision threshold fitted on
    # the images the run chose model-best.pth on (kept in the file); half: at one half only
    thresholds: str = "auto"
    # a pretrained MAE: the share of each image's patches removed; 0 = its run's pretrain.mask_ratio, or the
    # paper's 0.75 for a file that records none
    mask_ratio: float = 0.0
    # a pretrained MAE: a CSV that `openmae evaluate --predictions` wrote of images like its training ones (the same
    # checkpoint): each image's atypicality, how far its (error, a blur's error) lies from theirs, is measured against
    # it, and the share of images more atypical than 95% of the reference's (about 5% for images like them). Empty:
    # the reference a pretraining run's model-last.pth carries (its held-out images', pretrain.eval_every_epochs)
    reference: str = ""
    # a pretrained MAE (or any encoder): a folder or CSV list of images like the training ones (or a .safetensors
    # file of their tokens kept by save_reference); each image's farthest patch, its token's distance from the
    # nearest of theirs (1: their own 99th percentile), joins the numbers
    reference_images: str = ""
    reference_max_images: int = 1000  # of reference_images at most, spread evenly over them
    # the share of the reference's patch tokens searched: a greedy coreset (every token near one kept; PatchCore's)
    # below 1, the search that much faster, for a large reference (many images, a large model's many patches)
    reference_coreset: float = 1.0
    # a .safetensors file to keep the reference's patch tokens in, for later evaluations to read as reference_images
    # (without reading the images again); refused where reference_images is such a file already
    save_reference: str = ""
    # the views of the patch grid each image (and reference image) is read in: k x k, the grid also moved by 1/k of
    # a patch (4: half a patch, down, right and both), each view searched against the reference read at its shift,
    # the views' distances averaged on a finer grid (half-patch cells for 4 views of an even patch; the farthest
    # patch its highest cell, the distance maps that fine); k x k times the reference's and the images' passes and
    # searches. 1: the grid as it is
    map_views: int = 1
    # a pretrained MAE, images with classes (data.name=imagefolder: MVTec AD's test/good/ and test/<defect>/): the
    # class of normal images; each score's ROC-AUC of telling the other classes' images from them joins the numbers
    normal_class: str = ""
    # with normal_class: the folder of ground-truth masks (MVTec AD's ground_truth/, a subfolder a defect class,
    # <image>_mask.png white where the defect is); the pixel ROC-AUC and the per-region overlap (PRO) of the error
    # maps (visualize --errors') and, with reference_images, of the distance maps
    defect_masks: str = ""
    # with defect_masks or save_maps: the maps smoothed as PatchCore's are, a distance map spread to the pixels
    # bilinearly and each map blurred by a Gaussian of this sigma (pixels of the model's input); 0: as drawn, each
    # patch one value
    map_sigma: float = 0.0
    # a pretrained MAE: a folder to keep each image's map in, a float32 TIFF at the image's size in <its folder's
    # name>/<image>.tiff (MVTec AD's layout, which its evaluation script reads): the distance map with
    # reference_images, else the error map
    save_maps: str = ""
    # a pretrained MAE: which images --plot draws, the highest first: loss (the images it fills in worst: often
    # simply the hardest), relative_loss (its squared error over a generic inpainter's on the same pixels: those it
    # fills in worse than its training taught it to), atypicality (needs a reference: the least like those) or
    # farthest_patch (needs reference_images: the images with the patch least like theirs)
    rank_by: str = "loss"

    def check(self) -> None:
        require(self.batch_size >= 1, "evaluate.batch_size", self.batch_size, ">= 1")
        require(0 <= self.mask_ratio < 1, "evaluate.mask_ratio", self.mask_ratio,
                "0 (the run's own) or a share of the patches strictly between 0 and 1")
        require(self.thresholds in ("auto", "half"), "evaluate.thresholds", self.thresholds,
                "auto (the classifier file's fitted thresholds, where it has them) or half")
        require(self.precision in ("auto", *PRECISIONS), "evaluate.precision", self.precision,
                "auto, fp32, bf16 or fp16 (fp16 on CUDA only)")
        require(self.tta in TTA_MODES, "evaluate.tta", self.tta, " or ".join(TTA_MODES))
        require(self.rank_by in ("loss", "relative_loss", "atypicality", "farthest_patch"), "evaluate.rank_by",
                self.rank_by, "loss, relative_loss, atypicality or farthest_patch")
        require(self.reference_max_images >= 2, "evaluate.reference_max_images", self.reference_max_images,
                ">= 2 (each patch is compared with the other reference images')")
        require(0 < self.reference_coreset <= 1, "evaluate.reference_coreset", self.reference_coreset,
                "a share of the reference's patch tokens above 0 and at most 1 (1: all of them)")
        require(self.map_views >= 1 and isqrt(self.map_views) ** 2 == self.map_views, "evaluate.map_views",
                self.map_views, "a square number of views of the patch grid (1, 4, 9, 16; 1: the grid as it is)")
        require(self.map_sigma >= 0, "evaluate.map_sigma", self.map_sigma,
                "a Gaussian's sigma in pixels of the model's input, >= 0 (0: the maps unsmoothed)")
        require(not self.save_reference or self.save_reference.endswith(".safetensors"), "evaluate.save_reference",
                self.save_reference, "a file name ending in .safetensors")


@dataclass
class EvaluateConfig:
    # auto: the classifier file's architecture; its fields set over it what a file without one has guessed
    model: ModelSection = field(default_factory=lambda: ModelSection(name="auto"))
    data: DataConfig = field(default_factory=DataConfig)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)

    def check(self) -> None:
        require(bool(self.evaluate.init), "evaluate.init", self.evaluate.init,
                "a classifier file (--checkpoint runs/<finetune run>/model-best.pth) or a pretrained MAE's")
        require(not self.data.report_eval_split, "data.report_eval_split", self.data.report_eval_split,
                "false: evaluate reads one split, data.eval_split (or its held-out stand-in with data.holdout)")
