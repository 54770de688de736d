"""Where the defects are: ground-truth masks laid out as MVTec AD's (``ground_truth/<defect>/<image>_mask.png``,
white where the defect is), read for ``evaluate.defect_masks``, and how well maps (distances, errors) find their
pixels. A mask goes through the geometry its image went through (the evaluation's
resize and centre crop, :func:`openmae.data.transforms.eval_transform`), nearest-neighbour so that it stays 0 / 1;
images of the normal class have none (no defect pixel). Two measures: the pixel ROC-AUC, and MVTec AD's per-region
overlap (PRO), which weighs each defect region alike whatever its size (a scratch counts as much as a stain), up to
a false-positive rate of 30% of the normal pixels.

Both are computed from each map value's counts of pixels (a patch's value spreads to its pixels), not pixel by
pixel: a thousand 224-pixel images are 50 million pixels, but 196,000 patch values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2.functional import gaussian_blur

from openmae.data.transforms import eval_geometry

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
    geometry = T.Compose(eval_geometry(configured_crop, img_size, InterpolationMode.NEAREST))
    with Image.open(path) as img:
        shaped = geometry(img.convert("L"))
    return torch.from_numpy(np.asarray(shaped) > 0)


SMOOTHING_CHUNK = 64  # images blurred at a time (a padded copy each)
PRO_MAX_FPR = 0.3  # MVTec AD's: the PRO curve's area up to 30% of the normal pixels flagged, over 0.3


def spread(maps: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The values (M,) of ``maps`` (N, h, w; M = N h w) and the value each pixel of an (N, ``size``) image takes
    (N H W,) as their index: the map spread nearest-neighbour to the pixels, as the distance maps are drawn (a map
    at the images' size: each pixel its own)."""
    n, h, w = maps.shape
    if (h, w) == tuple(size):  # a map at the pixels' size: each pixel its own value
        return maps.flatten().float(), torch.arange(n * h * w)
    places = torch.arange(n * h * w, dtype=torch.float64).view(n, 1, h, w)  # exact as float64 up to 2^53
    index = F.interpolate(places, size=tuple(size), mode="nearest").long().flatten()  # (N H W,)
    return maps.flatten().float(), index


def smoothed(maps: torch.Tensor, size: tuple[int, int], sigma: float) -> torch.Tensor:
    """Maps (N, h, w) as PatchCore scores them: spread to the pixels ``size`` (H, W) bilinearly (a map at that size
    as it is), then blurred by a Gaussian of ``sigma`` pixels, cut at 4 sigma (scipy's) or at the image's edge, the
    edges reflected: (N, H, W) float32. ``sigma`` 0: ``maps`` unchanged."""
    if sigma == 0:
        return maps
    radius = max(0, min(round(4 * sigma), min(size) - 1))  # reflect padding needs less than the image's side
    out = []
    for part in maps.split(SMOOTHING_CHUNK):
        pixels = part[:, None].float()
        if tuple(part.shape[-2:]) != tuple(size):
            pixels = F.interpolate(pixels, size=tuple(size), mode="bilinear", align_corners=False)
        out.append(gaussian_blur(pixels, [2 * radius + 1] * 2, [sigma, sigma])[:, 0])
    return torch.cat(out)


def descending(values: torch.Tensor, *counts: torch.Tensor) -> list[torch.Tensor]:
    """Each of ``counts`` (M,) summed over the equal ``values`` (M,), highest value first: (G,) each, G distinct
    values (ties share one threshold, as a ranking's average ranks do)."""
    distinct, group = torch.unique(values, return_inverse=True)  # ascending
    return [torch.zeros(len(distinct), dtype=torch.float64).index_add_(0, group, c.double()).flip(0) for c in counts]


def pixel_auc(distances: torch.Tensor, masks: torch.Tensor) -> float:
    """The ROC-AUC (percent) of the defect pixels of ``masks`` (N, H, W) bool against the others, each pixel scored
    by its value of ``distances`` (N, h, w) spread to the pixels (:func:`spread`; each patch one value); nan without
    defect pixels or without others. Equal to :func:`openmae.eval.ranking.roc_auc` of every pixel's value, ties
    counting half."""
    values, index = spread(distances, masks.shape[-2:])
    defect = masks.flatten()
    pos, neg = descending(values, torch.bincount(index[defect], minlength=len(values)),
                          torch.bincount(index[~defect], minlength=len(values)))
    if not pos.sum() or not neg.sum():
        return float("nan")
    above = torch.cumsum(pos, 0) - pos  # defect pixels of a higher value than each group's
    return float(100 * (neg * (above + pos / 2)).sum() / (pos.sum() * neg.sum()))


def regions(masks: torch.Tensor) -> torch.Tensor:
    """Each image's connected defect regions (8-neighbour, as MVTec AD's evaluation labels them): (N, H, W) int64,
    0 outside the defects and 1 .. K over all images' K regions."""
    # scipy.ndimage.label does this an image at a time; scipy is not a dependency for this one use. A union-find over
    # the defect pixels' links to their right, lower and two lower diagonal neighbours, all links at once: each round
    # hangs the larger of two linked roots under the smaller and then points every pixel at its root; the regions
    # still to join at least halve in a round (a few rounds, seconds for millions of defect pixels).
    out = torch.zeros(masks.shape, dtype=torch.int64)
    count = int(masks.sum())
    if not count:
        return out
    ids = torch.full(masks.shape, -1, dtype=torch.int64)
    ids[masks] = torch.arange(count)  # each defect pixel's number
    neighbours = [(ids[:, :, :-1], ids[:, :, 1:]), (ids[:, :-1, :], ids[:, 1:, :]),
                  (ids[:, :-1, :-1], ids[:, 1:, 1:]), (ids[:, :-1, 1:], ids[:, 1:, :-1])]
    u = torch.cat([a[(a >= 0) & (b >= 0)] for a, b in neighbours])  # (E,) the links' ends
    v = torch.cat([b[(a >= 0) & (b >= 0)] for a, b in neighbours])
    parent = torch.arange(count)  # parent[x] <= x: no cycles
    while True:
        pu, pv = parent[u], parent[v]  # roots: every pixel points at its root
        apart = pu != pv
        if not bool(apart.any()):
            break
        u, v, pu, pv = u[apart], v[apart], pu[apart], pv[apart]
        parent.scatter_reduce_(0, torch.maximum(pu, pv), torch.minimum(pu, pv), reduce="amin")
        while not torch.equal(jumped := parent[parent], parent):
            parent = jumped
    out[masks] = torch.unique(parent, return_inverse=True)[1] + 1
    return out


def pro_auc(maps: torch.Tensor, areas: torch.Tensor, max_fpr: float = PRO_MAX_FPR) -> float:
    """MVTec AD's per-region overlap (percent): at each threshold of the map values (``maps`` (N, h, w) spread to
    the pixels of ``areas`` (N, H, W), each defect region's number as :func:`regions` gives it, 0 elsewhere), the
    mean over the defect regions of the share of each region's pixels at or above it, against the share of the
    normal pixels at or above it (the false-positive rate); the area under that curve up to ``max_fpr``
    (interpolated there), over ``max_fpr``. 100: every defect pixel above every normal one; nan without defect
    pixels or without normal ones."""
    label = torch.unique(areas.flatten(), return_inverse=True)[1]  # 1 .. K (a subset of the images' regions)
    if not bool((areas == 0).any()):
        return float("nan")
    sizes = torch.bincount(label).double()  # sizes[0]: the normal pixels
    if len(sizes) < 2:
        return float("nan")
    values, index = spread(maps, areas.shape[-2:])
    share = torch.where(label > 0, 1 / ((len(sizes) - 1) * sizes[label]), 0.0)  # a pixel's part of the mean overlap
    overlap, normal = descending(values, torch.zeros(len(values), dtype=torch.float64).index_add_(0, index, share),
                                 torch.bincount(index[label == 0], minlength=len(values)))
    fpr = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(normal, 0) / sizes[0]]).clamp(max=1)
    pro = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(overlap, 0)]).clamp(max=1)
    inside = int((fpr <= max_fpr).sum())  # fpr rises: the first points; the curve ends at 1 > max_fpr
    x, y = fpr[:inside], pro[:inside]
    if x[-1] < max_fpr:  # the point at max_fpr, on the line to the next
        t = (max_fpr - x[-1]) / (fpr[inside] - x[-1])
        x, y = torch.cat([x, x.new_tensor([max_fpr])]), torch.cat([y, (y[-1] + t * (pro[inside] - y[-1]))[None]])
    return float(100 * torch.trapezoid(y, x) / max_fpr)
