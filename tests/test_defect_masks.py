"""Ground-truth masks of defects (`evaluate.defect_masks`, MVTec AD's ground_truth/): found by name, put through the
evaluation's geometry, and the pixel ROC-AUC of the distance maps against them."""

import json

import numpy as np
import pytest
import torch
from helpers import call_cli
from PIL import Image

import openmae
from openmae.eval.defect_masks import mask_file, pixel_auc, read_mask
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


def test_evaluate_measures_the_distance_maps_against_the_defect_masks(tmp_path, datasets):
    """An MVTec AD layout whose good test images are reference images (distance 0 everywhere) and whose defect images
    are masked whole: every defect pixel is farther than every good one, pixel ROC-AUC 100, per class too. A missing
    mask is named; defect masks without a normal class are refused."""
    torch.manual_seed(0)
    model = openmae.create_model("mae_vit_debug_patch4_32")
    ckpt = tmp_path / "mae.pth"
    torch.save({"model": model.state_dict(), "model_config": model.cfg.to_dict()}, ckpt)
    photos = sorted((datasets / "imagenet-sample").glob("*.JPEG"))
    part = tmp_path / "part"
    for folder, chosen in {"train/good": photos[:6], "test/good": photos[:3], "test/crack": photos[300:302],
                           "test/scratch": photos[600:602]}.items():
        (part / folder).mkdir(parents=True)
        for photo in chosen:
            (part / folder / photo.name).write_bytes(photo.read_bytes())
            if folder in ("test/crack", "test/scratch"):
                (part / "ground_truth" / folder[5:]).mkdir(parents=True, exist_ok=True)
                Image.new("L", (40, 30), 255).save(part / "ground_truth" / folder[5:] / f"{photo.stem}_mask.png")
    settings = ["data.name=imagefolder", f"data.path={part}", "data.num_workers=0",
                f"evaluate.reference_images={part / 'train/good'}", "evaluate.normal_class=good"]
    proc = call_cli("evaluate", "--checkpoint", str(ckpt), *settings, f"evaluate.defect_masks={part / 'ground_truth'}",
                    "-o", str(tmp_path / "out.json"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["pixel_auc_farthest_patch"] == 100.0
    assert out["pixel_auc_per_class"] == {"crack": 100.0, "scratch": 100.0}
    assert "(57.14% of the pixels)" in proc.stderr  # 4 of 7 images masked whole
    (part / "ground_truth" / "scratch" / f"{photos[601].stem}_mask.png").unlink()
    proc = call_cli("evaluate", "--checkpoint", str(ckpt), *settings, f"evaluate.defect_masks={part / 'ground_truth'}")
    assert proc.returncode != 0 and f"no ground-truth mask of {part / 'test/scratch' / photos[601].name}" in proc.stderr
    proc = call_cli("evaluate", "--checkpoint", str(ckpt), *settings[:4], f"evaluate.defect_masks={part}")
    assert proc.returncode != 0 and "it needs evaluate.normal_class=" in proc.stderr, proc.stderr[-1500:]
