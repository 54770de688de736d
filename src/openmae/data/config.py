"""Data settings shared by pretraining, fine-tuning, linear probing and kNN."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from openmae.config import require
from openmae.data.jpeg import DECODERS
from openmae.data.survey import NORMS

NAMED = ("cifar10", "cifar100", "fashion-mnist", "mnist", "stl10")
KINDS = NAMED + ("folder", "imagefolder", "csv")
BALANCE = ("none", "classes")  # data.balance: how a training epoch draws its images
CSV_SUFFIXES = (".csv", ".tsv")  # what --data names as a list of images and labels (data.name=csv)
FORMATS = ("image", "array", "volume")
PLANES = ("axial", "coronal", "sagittal")
FOURTH_AXES = ("volumes", "bands")
LAYOUTS = ("auto", "hwc", "chw")
SHIFT_MODES = ("constant", "edge", "reflect")  # fine-tuning's random translation: how the uncovered border fills


@dataclass
class DataConfig:
    """Where images come from and how they are augmented.

    ``name``: a named dataset (cifar10, cifar100, fashion-mnist, mnist, stl10) read from ``root``,
    ``folder`` (any images under ``path``, searched recursively, no labels), ``imagefolder``
    (``path/<class>/<image>``) or ``csv`` (``path`` a CSV file of images and labels, or a ``{split}`` pattern:
    :mod:`openmae.data.labels`, columns named by ``csv_columns`` where its header does not say them). ``root``
    defaults to ``$OPENMAE_DATA``.

    ``holdout`` > 0 sets that fraction of the training split aside (a fixed random subset drawn with
    ``holdout_seed``): training reads the rest and evaluation reads the held-out images instead of
    ``eval_split``, so that evaluation settings can be chosen without looking at the test split.
    ``report_eval_split`` (fine-tuning and linear probing, with ``holdout``): evaluate on ``eval_split`` itself as
    well, each time the held-out images are evaluated; its numbers are logged with the split's name as a prefix
    (``test_top1``), and ``model-best.pth`` stays chosen on the held-out images. One run then both chooses its
    epoch without the test split and reports that epoch's test accuracy.

    ``format``: ``image`` reads image files (JPEG, PNG, ...) converted to the model's 1 or 3 channels; ``array`` reads
    ``.npy``, TIFF and PNG files of any number of bands (``model.in_chans``) in their own units, laid out as
    ``array_layout`` says (``auto``: from which axis has ``in_chans`` entries), normalised by ``mean`` / ``std``,
    which are measured on the training files when not set (:mod:`openmae.data.arrays`); ``volume`` reads 3-D scans
    (NIfTI, multi-frame DICOM, ``.npy`` / TIFF stacks) and makes each of their slices an image, cut across
    ``slice_plane`` in NIfTI files, with ``in_chans`` neighbouring slices as its bands (:mod:`openmae.data.scans`),
    normalised like arrays. Unset ``mean`` / ``std`` are
    first taken from the weights a command starts from, when they record them (:mod:`openmae.data.normalization`).
    """

    name: str = "folder"
    path: str = ""
    csv_columns: tuple[str, ...] = ()  # data.name=csv: [image, label] or [image, label, split]; () = from the header
    # data.name=csv: each image may have several classes (or none), listed in its label cell separated by
    # label_separator ("": the first of | ; , and a space that any label cell holds); classifiers then learn one
    # yes/no a class (sigmoid + binary cross-entropy) and are measured by mean average precision
    multi_label: bool = False
    label_separator: str = ""
    # data.name=csv: columns that are each a class, 1 where the image is of it, 0 or empty where not (CheXpert's
    # findings; one-hot diagnoses: one 1 a row unless multi_label); a cell of -1 (uncertain) reads as
    # uncertain_label, 0 or 1 (CheXpert's U-Zeros / U-Ones) or ignore (U-Ignore: left out of the losses and the
    # measures; multi_label only), and is refused while that is unset
    label_columns: tuple[str, ...] = ()
    uncertain_label: float | Literal["ignore"] | None = None
    format: str = "image"
    array_layout: str = "auto"
    slice_plane: str = "axial"
    # data.format=volume: a folder where each .nii.gz is decompressed once, on first read, and memory-mapped from
    # then on (a slice of a .nii.gz otherwise costs decompressing the file up to it); "" = off
    volume_cache: str = ""
    # data.format=volume: a 4-D NIfTI (X, Y, Z, T) read as T volumes (a time series: fMRI, DCE) or as volumes whose
    # slices have T bands (contrasts stored together, e.g. FLAIR / T1 / T1c / T2: model.in_chans must be T)
    fourth_axis: str = "volumes"
    # data.format=array or volume: values outside [low, high] read as the nearer bound, before anything else (a CT
    # window such as [-1000, 1000] Hounsfield units; a sensor's saturation); statistics are measured on them
    clip: tuple[float, float] | None = None
    # data.format=volume, read once per volume before training (openmae.data.survey): each volume's own intensity
    # scale, "zscore" (mean 0, std 1 over its foreground voxels: MR) or "percentile" (its norm_percentiles mapped to
    # 0 and 1, held there); "none" = the file's units
    volume_norm: str = "none"
    norm_percentiles: tuple[float, float] = (0.5, 99.5)
    # voxels above this value (file units, after clip) are foreground: volume_norm's statistics are taken over them,
    # and slices with fewer than min_foreground of their pixels above it are left out (air at a scan's ends)
    foreground: float | None = None
    min_foreground: float = 0.0
    root: str = ""
    download: bool = False
    train_split: str = "train"
    eval_split: str = "test"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    crop_scale: tuple[float, float] = (0.2, 1.0)
    hflip: float = 0.5
    eval_crop_pct: float | None = None
    num_workers: int = 2
    # pretraining: decode JPEGs (arrays: the workers cut out each crop) and resize / flip / normalise on the device
    device_augment: bool = False
    # with device_augment: JPEGs decoded on the device (nvJPEG; fast on GPUs with a hardware JPEG decoder: A100,
    # H100, H200); false: the workers decode and crop, the device resizes, flips and normalises (other GPUs, on
    # which torchvision decodes each JPEG's entropy-coded data on the training process's CPU)
    device_decode: bool = True
    # with device_augment and device_decode: the batched JPEG decoder, torchvision's decode_jpeg or TorchCodec's (the
    # same pixels; torchvision deprecates its image decoding since 0.29); auto: torchvision's while it has one
    jpeg_decoder: str = "auto"
    # with device_augment and loader workers: take and decode the next batch in a thread while the training loop
    # resizes and trains on this one (openmae.data.ahead); false: the whole device stage in line
    device_ahead: bool = True
    # the CPU path's crop (pretraining, fine-tuning), evaluation's resize and the workers' decoding for the device
    # path (device_decode=false) read a large JPEG at 1/2, 1/4 or 1/8 of its size when the crop box still spans twice
    # the output's pixels each way (openmae.data.draft); false: every image decoded at full size
    jpeg_draft: bool = True
    bad_files: str = "skip"
    # images of more pixels than this are refused as decompression bombs (a file whose header claims a huge size;
    # skipped like an unreadable file); 0: PIL's limit, 178,956,970 (a 108-MP photo reads, a 200-MP one does not)
    max_image_pixels: int = 0
    max_samples: int = 0
    repeat: int = 1  # training epochs go over the (limited) training images this many times
    # classes: each training epoch draws its images with replacement, every class alike (long-tailed labelled data;
    # as many images an epoch as before); none: every image once an epoch
    balance: str = "none"
    max_eval_samples: int = 0
    holdout: float = 0.0
    holdout_seed: int = 0
    report_eval_split: bool = False

    @property
    def reads_arrays(self) -> bool:
        """Files read as arrays of bands in their own units (``array``, ``volume``): normalised by measured
        statistics, augmented on tensors, shown stretched."""
        return self.format != "image"

    def check(self) -> None:
        require(self.name in KINDS, "data.name", self.name, f"one of {list(KINDS)}")
        require(self.format in FORMATS, "data.format", self.format, f"one of {list(FORMATS)}")
        require(self.slice_plane in PLANES, "data.slice_plane", self.slice_plane, f"one of {list(PLANES)}")
        require(self.fourth_axis in FOURTH_AXES, "data.fourth_axis", self.fourth_axis, f"one of {list(FOURTH_AXES)}")
        require(self.array_layout in LAYOUTS, "data.array_layout", self.array_layout, f"one of {list(LAYOUTS)}")
        require(self.format == "image" or self.name in ("folder", "imagefolder", "csv"), "data.format", self.format,
                f"'image' for the named dataset {self.name!r}; array files are read from data.name=folder, "
                "imagefolder or csv")
        needs = {"folder": "a folder of images", "imagefolder": "a folder of class folders",
                 "csv": "a CSV file of images and labels"}
        require(self.name not in needs or bool(self.path), "data.path", self.path,
                f"{needs.get(self.name)} (data.name={self.name}): give it with --data <folder or file.csv> (or "
                "data.path=...), or name a dataset, e.g. --data-root <datasets> data.name=cifar10")
        require(self.balance in BALANCE, "data.balance", self.balance, f"one of {list(BALANCE)}")
        require(not self.multi_label or self.name == "csv", "data.multi_label", self.multi_label,
                "false unless data.name=csv (several classes an image are read from a CSV list's label cells)")
        require(not self.multi_label or self.balance == "none", "data.balance", self.balance,
                "none with data.multi_label=true (drawing every class alike needs one class an image)")
        require(not self.multi_label or self.format != "volume", "data.format", self.format,
                "image or array with data.multi_label=true (volumes' slices take one class each)")
        require(not self.label_columns or self.name == "csv", "data.label_columns", self.label_columns,
                "empty unless data.name=csv (columns of a CSV list, each a class)")
        require(self.uncertain_label in (None, 0.0, 1.0, "ignore"), "data.uncertain_label", self.uncertain_label,
                "0 or 1 (what a class column's -1, uncertain, reads as), ignore (left out of the losses and measures), "
                "or unset to refuse such cells")
        require(self.uncertain_label != "ignore" or self.multi_label, "data.uncertain_label", self.uncertain_label,
                "0 or 1 without data.multi_label=true (one class an image has no label to leave out: set "
                "data.multi_label=true to leave the uncertain ones out)")
        require(len(self.csv_columns) in (0, 2, 3), "data.csv_columns", self.csv_columns,
                "[image column, label column] or [image, label, split] (data.name=csv), or [] to read them from the "
                "header")
        require(0 < self.crop_scale[0] <= self.crop_scale[1] <= 1, "data.crop_scale", self.crop_scale,
                "two numbers 0 < low <= high <= 1")
        require(0 <= self.hflip <= 1, "data.hflip", self.hflip, "a probability in [0, 1]")
        require(self.num_workers >= 0, "data.num_workers", self.num_workers, ">= 0")
        require(self.device_decode or self.device_augment, "data.device_decode", self.device_decode,
                "true unless data.device_augment=true (it says where that path decodes JPEGs)")
        require(self.jpeg_decoder in DECODERS, "data.jpeg_decoder", self.jpeg_decoder, f"one of {list(DECODERS)}")
        require(self.device_ahead or self.device_augment, "data.device_ahead", self.device_ahead,
                "true unless data.device_augment=true (it says whether that path decodes a batch ahead)")
        require(self.bad_files in ("skip", "fail"), "data.bad_files", self.bad_files, "'skip' or 'fail'")
        require(self.max_image_pixels >= 0, "data.max_image_pixels", self.max_image_pixels,
                ">= 0 (0: PIL's limit)")
        require(self.max_samples >= 0, "data.max_samples", self.max_samples, ">= 0 (0 = all)")
        require(self.repeat >= 1, "data.repeat", self.repeat, ">= 1 (training epochs go over the images this many times)")
        require(self.max_eval_samples >= 0, "data.max_eval_samples", self.max_eval_samples, ">= 0 (0 = all)")
        require(self.eval_crop_pct is None or 0 < self.eval_crop_pct <= 1, "data.eval_crop_pct",
                self.eval_crop_pct, "in (0, 1]")
        require(0 <= self.holdout < 1, "data.holdout", self.holdout,
                "a fraction in [0, 1) of the training split to evaluate on (0 = evaluate on data.eval_split)")
        require(self.holdout == 0 or self.train_split != self.eval_split, "data.eval_split", self.eval_split,
                f"a split other than data.train_split={self.train_split!r} when data.holdout > 0 (it names which "
                "requests get the held-out part)")
        require(not self.report_eval_split or self.holdout > 0, "data.report_eval_split", self.report_eval_split,
                "false unless data.holdout > 0 (without a held-out part, evaluation already reads data.eval_split)")
        require(self.clip is None or (len(self.clip) == 2 and self.clip[0] < self.clip[1]), "data.clip", self.clip,
                "two numbers [low, high], low < high")
        require(self.clip is None or self.reads_arrays, "data.clip", self.clip,
                "unset with data.format=image (it bounds the values of arrays and volumes, in their own units)")
        require(self.volume_norm in NORMS, "data.volume_norm", self.volume_norm, f"one of {list(NORMS)}")
        require(0 <= self.norm_percentiles[0] < self.norm_percentiles[1] <= 100, "data.norm_percentiles",
                self.norm_percentiles, "two percentiles 0 <= low < high <= 100")
        require(0 <= self.min_foreground < 1, "data.min_foreground", self.min_foreground,
                "a fraction of a slice's pixels in [0, 1)")
        require(self.min_foreground == 0 or self.foreground is not None, "data.min_foreground", self.min_foreground,
                "0 unless data.foreground is set (the value above which a pixel is foreground)")
        surveyed = self.volume_norm != "none" or self.min_foreground > 0 or self.foreground is not None
        require(not surveyed or self.format == "volume", "data.format", self.format,
                "'volume' for data.volume_norm, data.foreground and data.min_foreground (they work per volume)")
        require((self.mean is None) == (self.std is None), "data.mean/std", (self.mean, self.std),
                "both set or both unset")
        require(self.std is None or all(s > 0 for s in self.std), "data.std", self.std, "positive numbers")


def check_recipe(data_format: str, auto_augment: str, color_jitter: float) -> None:
    """RandAugment and colour jitter are operations on 8-bit RGB pictures (PIL): refused for arrays of bands."""
    if data_format != "image":
        require(not auto_augment, "finetune.auto_augment", auto_augment,
                f"'' with data.format={data_format} (RandAugment works on 8-bit RGB pictures, not on arrays of bands)")
        require(not color_jitter, "finetune.color_jitter", color_jitter, f"0 with data.format={data_format} (it works on RGB)")
