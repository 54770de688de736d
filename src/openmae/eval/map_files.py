"""Each image's anomaly map kept as a file at the image's own size (``evaluate.save_maps``): a float32 TIFF in
``<folder>/<the image's folder>/<image>.tiff``, MVTec AD's layout (``<object>/test/<defect>/<image>.tiff`` with
``<folder>`` = ``<maps>/<object>/test``), which its official evaluation script and other tools read and score
against the ground truth at full resolution.

A map covers what the evaluation saw: the image resized and centre-cropped
(:func:`openmae.data.transforms.eval_transform`). It is put back where that crop lay in the resized image, the margins
the crop left out at the map's lowest value (no score: nothing seen there; ``data.eval_crop_pct=1`` sees the whole
image), then resized to the image's size bilinearly."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from openmae.data.images import BadImageError, read_header
from openmae.data.transforms import eval_crop_pct, eval_resize

log = logging.getLogger(__name__)


def resized_size(original: tuple[int, int], img_size: tuple[int, int], crop_pct: float) -> tuple[int, int]:
    """(h, w) of an image of size ``original`` (H0, W0) after the evaluation's resize, before its centre crop: both
    sides to ``img_size / crop_pct``, or for a square input the short side to it and the long one in proportion,
    rounded down (torchvision's ``Resize`` of one number, whose rule is private there)."""
    resize = eval_resize(crop_pct, img_size)
    if not isinstance(resize, int):
        return resize
    h0, w0 = original
    short, long = (w0, h0) if w0 <= h0 else (h0, w0)
    new_short, new_long = resize, int(resize * long / short)
    return (new_long, new_short) if w0 <= h0 else (new_short, new_long)


def in_original_frame(values: torch.Tensor, original: tuple[int, int], img_size: tuple[int, int], crop_pct: float
                      ) -> torch.Tensor:
    """A map ``values`` (H, W) of the evaluation's crop put back into the frame of the image of size ``original``
    (H0, W0): (H0, W0) float32, outside the crop the map's lowest value."""
    h, w = resized_size(original, img_size, crop_pct)
    top, left = int(round((h - img_size[0]) / 2.0)), int(round((w - img_size[1]) / 2.0))  # torchvision's CenterCrop
    canvas = torch.full((h, w), float(values.min()))
    canvas[top : top + img_size[0], left : left + img_size[1]] = values
    return F.interpolate(canvas[None, None], size=tuple(original), mode="bilinear", align_corners=False)[0, 0]


def map_file(folder: Path, image: Path) -> Path:
    """Where the map of ``image`` goes: ``folder/<its folder's name>/<its name>.tiff``."""
    return folder / image.parent.name / f"{image.stem}.tiff"


def write_maps(folder: Path, images: list[Path], maps: torch.Tensor, img_size: tuple[int, int],
               configured_crop: float | None) -> None:
    """Each of ``maps`` (N, h, w) or (N, H, W) (a patch map spread to the pixels as drawn: each patch one value) as
    a float32 TIFF at its image's size (:func:`in_original_frame`), in :func:`map_file`."""
    crop_pct = eval_crop_pct(configured_crop, img_size)
    pixels = F.interpolate(maps[:, None].float(), size=tuple(img_size), mode="nearest")[:, 0]  # (N, H, W)
    for image, values in zip(images, pixels):
        try:
            header = read_header(image)
        except BadImageError as err:
            raise ValueError(f"evaluate.save_maps writes each map at its image's size, read from the image's header: "
                             f"{image} is not a picture that PIL reads ({err}); leave evaluate.save_maps out") from err
        out = map_file(folder, image)
        out.parent.mkdir(parents=True, exist_ok=True)
        frame = in_original_frame(values, (header.height, header.width), img_size, crop_pct)
        Image.fromarray(np.ascontiguousarray(frame.numpy(), dtype=np.float32)).save(out, format="TIFF")
    log.info("wrote %d maps to %s (<image's folder>/<image>.tiff, float32 at each image's size)", len(images), folder)
