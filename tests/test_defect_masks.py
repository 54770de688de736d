"""Ground-truth masks of defects (`evaluate.defect_masks`, MVTec AD's ground_truth/): found by name, put through the
evaluation's geometry, and the pixel ROC-AUC of the distance maps against them."""

import json

import numpy as np
import pytest
import torch
from helpers import call_cli, debug_mae_file, photo_folders
from PIL import Image

from openmae.eval.defect_masks import PRO_MAX_FPR, mask_file, pixel_auc, pro_auc, read_mask, regions, smoothed
from openmae.eval.ranking import roc_auc


def test_a_mask_goes_through_the_evaluations_resize_and_centre_crop(tmp_path):
    """A 64 x 32 mask, white on its left half, read at 32 x 32 with no margin (crop 1): resized to 64 x 32, the centre
    32 columns cut out (16 to 47), so the left 16 columns white; with crop 0.5, resized to 128 x 64 and its centre
    32 x 32 cut out (columns 48 to 79): the left 16 white again, at twice the scale."""
    mask = Image.new("L", (64, 32))
    mask.paste(255, (0, 0, 32, 32))
    path = tmp_path / "m.png"
    mask.save(path)
    for crop in (None, 0.5):
        got = read_mask(path, (32, 32), crop)
        assert got.shape == (32, 32) and got.dtype == torch.bool
        assert bool(got[:, :16].all()) and not bool(got[:, 16:].any()), crop


def test_the_mask_is_found_by_mvtec_name_or_the_images_own_and_named_when_missing(tmp_path):
    (tmp_path / "gt" / "crack").mkdir(parents=True)
    (tmp_path / "gt" / "crack" / "000_mask.png").write_bytes(b"x")
    (tmp_path / "gt" / "crack" / "001.png").write_bytes(b"x")
    assert mask_file(tmp_path / "gt", tmp_path / "test" / "crack" / "000.png") == tmp_path / "gt/crack/000_mask.png"
    assert mask_file(tmp_path / "gt", tmp_path / "test" / "crack" / "001.jpg") == tmp_path / "gt/crack/001.png"
    with pytest.raises(FileNotFoundError, match="no ground-truth mask of .*002.png: looked for .*crack/002_mask.png "
                                                "or .*crack/002.png"):
        mask_file(tmp_path / "gt", tmp_path / "test" / "crack" / "002.png")


def test_the_pixel_auc_scores_each_pixel_by_its_patchs_distance():
    """Two images of 2 x 2 patches of 4 x 4 pixels: one far patch. A mask over exactly its pixels: 100. A mask over
    the patch beside it: the ROC-AUC of the patch values spread to their pixels."""
    distances = torch.ones(2, 2, 2)
    distances[0, 0, 1] = 5.0
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, :4, 4:] = True
    assert pixel_auc(distances, masks) == 100.0
    beside = torch.zeros(2, 8, 8, dtype=torch.bool)
    beside[1, 4:, :4] = True
    pixels = np.kron(distances.numpy(), np.ones((4, 4)))  # (2, 8, 8): each patch's value on its pixels
    assert pixel_auc(distances, beside) == pytest.approx(100 * roc_auc(pixels.ravel(), beside.numpy().ravel()))
    assert pixel_auc(distances, beside) < 60


def flood_regions(masks: np.ndarray) -> np.ndarray:
    """The reference labelling: each image's 8-neighbour regions by a flood fill, pixel by pixel."""
    out = np.zeros(masks.shape, dtype=np.int64)
    count = 0
    for n, y0, x0 in zip(*np.nonzero(masks)):
        if out[n, y0, x0]:
            continue
        count += 1
        out[n, y0, x0] = count
        todo = [(y0, x0)]
        while todo:
            y, x = todo.pop()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < masks.shape[1] and 0 <= xx < masks.shape[2] and masks[n, yy, xx] and not out[n, yy, xx]:
                        out[n, yy, xx] = count
                        todo.append((yy, xx))
    return out


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two labellings put the same pixels together (their numbers may differ)."""
    pairs = set(zip(a.ravel().tolist(), b.ravel().tolist()))
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


def test_regions_are_8_connected_per_image_and_match_a_flood_fill():
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 2, 0] = True  # touching at corners: one region
    masks[0, 5:, 5:] = True  # a second
    masks[1, :, 3] = True  # a line down one image ...
    masks[2, :, 3] = True  # ... and the same in the next: two regions, not one
    got = regions(masks)
    assert got.dtype == torch.int64 and int(got.max()) == 4
    assert got[0, 0, 0] == got[0, 1, 1] == got[0, 2, 0] != got[0, 5, 5] and got[1, 0, 3] != got[2, 0, 3]
    assert not bool(got[~masks].any())
    spiral = np.zeros((1, 15, 15), dtype=bool)  # one long winding region: many rounds of joining
    for k in range(0, 7, 2):
        spiral[0, k, k : 15 - k] = spiral[0, k : 15 - k, 14 - k] = spiral[0, 14 - k, k : 15 - k] = True
        spiral[0, k + 2 : 15 - k, k] = True
    gen = np.random.default_rng(0)
    for masks in (spiral, gen.random((4, 30, 40)) > 0.55, gen.random((2, 9, 9)) > 0.2):  # percolating, near-full
        got = regions(torch.from_numpy(masks)).numpy()
        want = flood_regions(masks)
        assert got.max() == want.max() and same_partition(got, want)


def naive_pro(pixels: np.ndarray, masks: np.ndarray, max_fpr: float) -> float:
    """PRO as MVTec AD defines it, threshold by threshold over every pixel: the mean share of each region's pixels
    at or above it against the share of normal pixels at or above it; the area up to max_fpr, over max_fpr."""
    areas = flood_regions(masks)
    xs, ys = [0.0], [0.0]
    for t in np.unique(pixels)[::-1]:
        flagged = pixels >= t
        xs.append(flagged[~masks].mean())
        ys.append(np.mean([flagged[areas == r].mean() for r in range(1, areas.max() + 1)]))
    xs, ys = np.array(xs), np.array(ys)
    inside = xs <= max_fpr
    x, y = list(xs[inside]), list(ys[inside])
    if x[-1] < max_fpr:
        after = np.argmax(xs > max_fpr)
        y.append(np.interp(max_fpr, [x[-1], xs[after]], [y[-1], ys[after]]))
        x.append(max_fpr)
    return 100 * np.trapezoid(y, x) / max_fpr


def test_pro_and_pixel_auc_match_their_definitions_pixel_by_pixel():
    """Random patch maps with ties (values of 5 levels) spread to their pixels, and masks of several regions each:
    the PRO and the pixel ROC-AUC, computed from each value's counts, equal the definitions computed over every
    pixel; at other false-positive limits too."""
    gen = np.random.default_rng(1)
    for _ in range(4):
        maps = torch.from_numpy(gen.integers(0, 5, (3, 4, 4)).astype(np.float32))
        masks = np.zeros((3, 16, 16), dtype=bool)
        for _ in range(4):
            n, y, x, h, w = gen.integers(0, 3), *gen.integers(0, 13, 2), *gen.integers(1, 6, 2)
            masks[n, y : y + h, x : x + w] = True
        pixels = np.kron(maps.numpy(), np.ones((4, 4)))  # (3, 16, 16)
        truth = torch.from_numpy(masks)
        for limit in (PRO_MAX_FPR, 0.05, 1.0):
            assert pro_auc(maps, regions(truth), limit) == pytest.approx(naive_pro(pixels, masks, limit), abs=1e-9)
        assert pixel_auc(maps, truth) == pytest.approx(100 * roc_auc(pixels.ravel(), masks.ravel()), abs=1e-9)


def test_pro_weighs_each_region_alike_whatever_its_size():
    """A large region (60 pixels) and a one-pixel region, the map high on the small one only: the pixel ROC-AUC is
    low (most defect pixels rank with the normal ones), the PRO 57.5 (half the regions found at no false positive,
    the other only with every pixel flagged: the curve's line from (0, 0.5) to (1, 1), read to 0.3: an area of
    0.3 (0.5 + 0.65) / 2); high on the large one only, the pixel AUC high but the PRO the same. Without normal or
    defect pixels: nan."""
    masks = torch.zeros(1, 20, 20, dtype=torch.bool)
    masks[0, :6, :10] = True
    masks[0, 15, 15] = True
    small, large = torch.zeros(1, 20, 20), torch.zeros(1, 20, 20)
    small[0, 15, 15] = 1
    large[0, :6, :10] = 1
    areas = regions(masks)
    assert pro_auc(small, areas) == pytest.approx(57.5) == pro_auc(large, areas)
    assert pixel_auc(small, masks) < 52 < 98 < pixel_auc(large, masks)
    assert np.isnan(pro_auc(small, torch.zeros(1, 20, 20, dtype=torch.int64)))
    assert np.isnan(pro_auc(small, torch.ones(1, 20, 20, dtype=torch.int64)))


def test_smoothing_is_a_gaussian_of_the_bilinear_map_with_reflected_edges():
    """A map at the pixels' size blurred by sigma 1.5: a separable convolution with exp(-t^2 / 2 sigma^2), t up to
    4 sigma (6), the edges reflected, computed in numpy; a radius past the image's side cut to it (sigma 4 on 9
    pixels: 8). A patch map is spread bilinearly first: a constant stays constant, one high patch peaks at its
    centre. Sigma 0: the map itself."""
    gen = np.random.default_rng(2)
    errors = torch.from_numpy(gen.random((2, 16, 12)).astype(np.float32))

    def blurred(x: np.ndarray, sigma: float, radius: int) -> np.ndarray:
        weights = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma**2))
        weights /= weights.sum()
        for axis in (1, 2):
            padded = np.pad(x, [(0, 0)] + [(radius, radius) if a == axis else (0, 0) for a in (1, 2)], mode="reflect")
            x = np.apply_along_axis(lambda v: np.convolve(v, weights, mode="valid"), axis, padded)
        return x

    np.testing.assert_allclose(smoothed(errors, (16, 12), 1.5).numpy(), blurred(errors.numpy(), 1.5, 6), atol=1e-5)
    small = errors[:, :9, :9]
    np.testing.assert_allclose(smoothed(small, (9, 9), 4.0).numpy(), blurred(small.numpy(), 4.0, 8), atol=1e-5)
    assert smoothed(errors, (16, 12), 0) is errors
    patches = torch.full((1, 4, 4), 3.0)
    torch.testing.assert_close(smoothed(patches, (32, 32), 2.0), torch.full((1, 32, 32), 3.0))
    patches[0, 1, 2] = 10.0  # rows 8-15, columns 16-23: its centre between pixels 11-12 and 19-20
    peak = divmod(int(smoothed(patches, (32, 32), 2.0)[0].argmax()), 32)
    assert peak[0] in (11, 12) and peak[1] in (19, 20)
    # sigma 0.1: a kernel of one pixel, the bilinear spread alone; pixel (12, 24) reads source row 12.5 / 8 - 0.5 =
    # 1.0625 and column 24.5 / 8 - 0.5 = 2.5625: 0.9375 of row 1 and 0.4375 of column 2, the high patch's
    assert float(smoothed(patches, (32, 32), 0.1)[0, 12, 24]) == pytest.approx(3 + 7 * 0.9375 * 0.4375)


def test_evaluate_measures_the_distance_and_error_maps_against_the_defect_masks(tmp_path, datasets):
    """An MVTec AD layout whose good test images are reference images (distance 0 everywhere) and whose defect images
    are masked whole: every defect pixel is farther than every good one, pixel ROC-AUC and PRO 100, per class too.
    The error maps' measures equal those of the maps computed directly, all images in one batch (the command's in
    batches of 2: each image's masks drawn from its place, not its batch). Without reference images the error maps
    alone. A missing mask is named; defect masks without a normal class are refused."""
    from openmae.data.build import eval_batches
    from openmae.data.config import DataConfig
    from openmae.data.normalization import IMAGENET_MEAN, IMAGENET_STD
    from openmae.eval.error_map import error_maps

    ckpt = tmp_path / "mae.pth"
    model = debug_mae_file(ckpt)
    photos = sorted((datasets / "imagenet-sample").glob("*.JPEG"))
    part = tmp_path / "part"
    defects = {"crack": photos[300:302], "scratch": photos[600:602]}
    photo_folders(part, {"train/good": photos[:6], "test/good": photos[:3],
                         **{f"test/{kind}": chosen for kind, chosen in defects.items()}})
    for kind, chosen in defects.items():
        (part / "ground_truth" / kind).mkdir(parents=True)
        for photo in chosen:
            Image.new("L", (40, 30), 255).save(part / "ground_truth" / kind / f"{photo.stem}_mask.png")
    settings = ["data.name=imagefolder", f"data.path={part}", "data.num_workers=0", "evaluate.normal_class=good",
                f"evaluate.reference_images={part / 'train/good'}"]
    masks = f"evaluate.defect_masks={part / 'ground_truth'}"
    proc = call_cli("evaluate", "--checkpoint", str(ckpt), *settings, masks, "evaluate.batch_size=2",
                    "-o", str(tmp_path / "out.json"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["pixel_auc_distance_map"] == 100.0 == out["pro_distance_map"]
    for defect in ("crack", "scratch"):
        assert out["localisation_per_class"][defect]["pixel_auc_distance_map"] == 100.0
        assert out["localisation_per_class"][defect]["pro_distance_map"] == 100.0
    assert "(57.14% of the pixels, 4 regions)" in proc.stderr  # 4 of 7 images masked whole
    d = DataConfig(name="imagefolder", path=str(part), num_workers=0, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
    images = next(iter(eval_batches(d, "test", (32, 32), 3, 7))).images  # crack, good, scratch: 2, 3, 2
    errors = error_maps(model, images, torch.arange(7), 0.75)  # (7, 32, 32)
    truth = torch.zeros(7, 32, 32, dtype=torch.bool)
    truth[[0, 1, 5, 6]] = True
    assert out["pixel_auc_error_map"] == pytest.approx(pixel_auc(errors, truth), abs=1e-6)
    assert out["pro_error_map"] == pytest.approx(pro_auc(errors, regions(truth)), abs=1e-6)
    crack = torch.tensor([0, 1, 2, 3, 4])
    assert out["localisation_per_class"]["crack"]["pro_error_map"] == pytest.approx(
        pro_auc(errors[crack], regions(truth[crack])), abs=1e-6)
    assert 0 < out["pro_error_map"] < 100  # a random model's errors: neither all above nor all below
    peaks = errors.flatten(1).amax(1).numpy()  # each image's largest error: its score
    assert out["detection_auc_error_map_peak"] == pytest.approx(100 * roc_auc(peaks, truth.flatten(1).any(1).numpy()))
    assert out["detection_auc_per_class"]["scratch"]["error_map_peak"] == pytest.approx(
        100 * roc_auc(peaks[2:], np.array([False] * 3 + [True] * 2)))
    proc = call_cli("evaluate", "--checkpoint", str(ckpt), *settings[:4], masks, "-o", str(tmp_path / "errors.json"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    alone = json.loads((tmp_path / "errors.json").read_text())
    assert alone["pro_error_map"] == pytest.approx(out["pro_error_map"], abs=1e-6)
    assert "pro_distance_map" not in alone and "error map: pixel ROC-AUC" in proc.stderr
    proc = call_cli("evaluate", "--checkpoint", str(ckpt), *settings[:4], masks, "evaluate.map_sigma=2",
                    "-o", str(tmp_path / "smooth.json"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    smooth = json.loads((tmp_path / "smooth.json").read_text())
    assert smooth["map_sigma"] == 2.0 and smooth["pro_error_map"] == pytest.approx(
        pro_auc(smoothed(errors, (32, 32), 2.0), regions(truth)), abs=1e-6) != pytest.approx(out["pro_error_map"])
    proc = call_cli("evaluate", "--checkpoint", str(ckpt), *settings[:4], "evaluate.map_sigma=2")
    assert proc.returncode != 0 and "evaluate.map_sigma=2.0 smooths the maps scored against" in proc.stderr
    (part / "ground_truth" / "scratch" / f"{photos[601].stem}_mask.png").unlink()
    proc = call_cli("evaluate", "--checkpoint", str(ckpt), *settings, masks)
    assert proc.returncode != 0 and f"no ground-truth mask of {part / 'test/scratch' / photos[601].name}" in proc.stderr
    proc = call_cli("evaluate", "--checkpoint", str(ckpt), *settings[:3], masks)
    assert proc.returncode != 0 and "it needs evaluate.normal_class=" in proc.stderr, proc.stderr[-1500:]


def test_the_mvtec_benchmark_tabulates_each_category_and_their_mean(tmp_path, datasets, capsys):
    """benchmarks/mvtec.py on two categories laid out as MVTec AD's, each's good test images among its reference and
    its defects masked whole: the distance maps' PRO and pixel ROC-AUC 100 in each, the error maps' measured, the
    mean row the categories' mean; the maps kept in MVTec AD's layout; a folder without categories refused."""
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "benchmarks"))
    from mvtec import main

    ckpt = tmp_path / "mae.pth"
    debug_mae_file(ckpt)
    photos = sorted((datasets / "imagenet-sample").glob("*.JPEG"))
    for n, category in enumerate(("bottle", "screw")):
        part, defect = tmp_path / "mvtec" / category, photos[300 + 10 * n : 302 + 10 * n]
        photo_folders(part, {"train/good": photos[4 * n : 4 * n + 4], "test/good": photos[4 * n : 4 * n + 2],
                             "test/crack": defect})
        (part / "ground_truth" / "crack").mkdir(parents=True)
        for photo in defect:
            Image.new("L", (40, 30), 255).save(part / "ground_truth" / "crack" / f"{photo.stem}_mask.png")
    (tmp_path / "mvtec" / "readme").mkdir()  # not a category
    got = main([str(tmp_path / "mvtec"), "--checkpoint", str(ckpt), "--maps", str(tmp_path / "maps"), "--json",
                str(tmp_path / "mvtec.json")])
    assert list(got["categories"]) == ["bottle", "screw"]
    for row in got["categories"].values():
        assert row["pro_distance_map"] == 100.0 == row["pixel_auc_distance_map"] and row["samples"] == 4
        assert 0 < row["pro_error_map"] < 100
    assert got["mean"]["pro_error_map"] == pytest.approx(
        (got["categories"]["bottle"]["pro_error_map"] + got["categories"]["screw"]["pro_error_map"]) / 2)
    assert json.loads((tmp_path / "mvtec.json").read_text())["mean"] == got["mean"]
    mean = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| mean |"))
    cells = [float(cell) for cell in mean.strip("| ").split(" | ")[1:]]  # image, error-map peak, distance map's two, ...
    assert cells[0] == cells[2] == cells[3] == 100.0 and cells[5] == pytest.approx(got["mean"]["pro_error_map"], abs=0.05)
    assert (tmp_path / "maps" / "screw" / "test" / "crack" / f"{photos[310].stem}.tiff").is_file()
    with pytest.raises(SystemExit, match="no MVTec AD category in"):
        main([str(tmp_path / "maps"), "--checkpoint", str(ckpt)])
