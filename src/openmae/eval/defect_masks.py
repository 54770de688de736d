"""Where the defects are: ground-truth masks laid out as MVTec AD's (``ground_truth/<defect>/<image>_mask.png``,
white where the defect is), read for ``evaluate.defect_masks``, and how well distance maps find their pixels (the
pixel-level ROC-AUC of anomaly detection). A mask goes through the geometry its image went through (the evaluation's
resize and centre crop, :func:`openmae.data.transforms.eval_transform`), nearest-neighbour so that it stays 0 / 1;
images of the normal class have none (no defect pixel)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from openmae.data.transforms import eval_crop_pct
from openmae.eval.ranking import roc_auc

MASK_NAMES = ("{stem}_mask.png", "{stem}.png")  # MVTec AD's name, then the image's own


def mask_file(masks: Path, image: Path) -> Path:
    """The mask of ``image`` (``.../<defect>/<stem>.<ext>``) under ``masks``: ``<defect>/<stem>_mask.png`` or
    ``<defect>/<stem>.png``; refused, naming both, where neither is there."""
    folder = masks / image.parent.name
    for name in MASK_NAMES:
        path = folder / name.format(stem=image.stem)
        if path.is_file():
            return path
    tried = " or ".join(str(folder / n.format(stem=image.stem)) for n in MASK_NAMES)
    raise FileNotFoundError(f"no ground-truth mask of {image}: looked for {tried} (evaluate.defect_masks names the "
                            "folder of one subfolder a defect class, as MVTec AD's ground_truth/)")


def read_mask(path: Path, img_size: tuple[int, int], configured_crop: float | None) -> torch.Tensor:
    """The mask (H, W) bool of ``path`` (non-zero: defect), resized and centre-cropped as the evaluation's images
    are, nearest-neighbour."""
    crop_pct = eval_crop_pct(configured_crop, img_size)
    resize = tuple(int(s / crop_pct) for s in img_size)
    geometry = T.Compose([T.Resize(resize if img_size[0] != img_size[1] else resize[0],
                                   interpolation=InterpolationMode.NEAREST), T.CenterCrop(img_size)])
    with Image.open(path) as img:
        shaped = geometry(img.convert("L"))
    return torch.from_numpy(np.asarray(shaped) > 0)


def pixel_auc(distances: torch.Tensor, masks: torch.Tensor) -> float:
    """The ROC-AUC (percent) of the defect pixels of ``masks`` (N, H, W) bool against the others, each pixel scored
    by its patch's distance of ``distances`` (N, h, w), as the distance maps draw it (each patch one value);
    nan without defect pixels or without others."""
    size = masks.shape[-2:]
    pixels = F.interpolate(distances[:, None].float(), size=size, mode="nearest")[:, 0]  # (N, H, W)
    return 100 * roc_auc(pixels.flatten().numpy(), masks.flatten().numpy())
