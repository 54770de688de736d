"""Distance maps (`openmae visualize --distances`): each patch token's distance from the nearest reference patch
token, the reference's own unit, each patch at its place, a coreset of the reference, the command."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import call_cli, debug_mae_file, photo_folders, reference_case
from PIL import Image
from torch import nn

import openmae
from openmae.eval import patch_distance
from openmae.eval.error_map import heat_colours
from openmae.eval.patch_distance import (
    PatchBank,
    PatchReference,
    ReferenceImages,
    build_reference,
    coreset,
    distance_map,
    nearest,
)
from openmae.models.patches import patchify


class PixelTokens(nn.Module):
    """A stand-in encoder whose patch tokens are the patches' own pixels (8 x 8, one channel), after a prefix token."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = SimpleNamespace(grid_size=(4, 4), patch_size=(8, 8))  # as timm's PatchEmbed
        self.unused = nn.Parameter(torch.zeros(1))

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        tokens = patchify(imgs, 8)  # (N, 16, 64)
        return torch.cat([torch.zeros_like(tokens[:, :1]), tokens], dim=1)


def test_nearest_is_the_whole_matrix_minimum_block_by_block_and_leaves_out_the_own_image(monkeypatch):
    monkeypatch.setattr(patch_distance, "BLOCK", 7 * 50)  # 7 rows of the 50-token bank at a time
    gen = torch.Generator().manual_seed(0)
    bank = PatchBank(torch.randn(50, 8, generator=gen), torch.arange(50) // 10, 1.0)
    queries = torch.randn(23, 8, generator=gen)
    full = torch.cdist(queries, bank.tokens)
    torch.testing.assert_close(nearest(queries, bank), full.amin(1))
    own = torch.arange(23) % 5
    torch.testing.assert_close(nearest(queries, bank, own), full.masked_fill(own[:, None] == bank.image, 1e9).amin(1))
    assert torch.equal(nearest(bank.tokens[:10], bank), torch.zeros(10))  # a bank token is its own nearest


def test_the_bank_numbers_its_images_across_batches_and_sets_its_unit_from_the_other_images_patches():
    encoder = PixelTokens()
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(3, 1, 32, 32, generator=gen), torch.randn(2, 1, 32, 32, generator=gen)]
    bank = build_reference(encoder, batches).banks[0]
    assert bank.tokens.shape == (5 * 16, 64)
    assert torch.equal(bank.image, torch.arange(5).repeat_interleave(16))
    assert torch.equal(bank.tokens[16 * 3 + 5], patchify(batches[1][:1], 8)[0, 5])
    others = torch.cdist(bank.tokens, bank.tokens).masked_fill(bank.image[:, None] == bank.image, float("inf"))
    assert bank.scale == pytest.approx(float(others.amin(1).quantile(0.99)), rel=1e-6)  # all 80 < SCALE_PATCHES
    with pytest.raises(ValueError, match="fewer than two images"):
        build_reference(encoder, [torch.randn(1, 1, 32, 32)]).banks[0]


def test_the_coreset_is_the_greedy_k_center_choice():
    """Without projection (tokens of at most CORESET_DIMS dimensions): the first token drawn with the seed, then each
    time a token farthest from the nearest of those chosen before (within float16's rounding of the search), as a
    whole distance matrix finds it; no token twice."""
    tokens = torch.randn(300, 16, generator=torch.Generator().manual_seed(3))
    chosen = coreset(tokens, 40, seed=5).tolist()
    assert chosen[0] == int(torch.randint(300, (1,), generator=torch.Generator().manual_seed(5)))
    full = torch.cdist(tokens, tokens)
    for k in range(1, 40):
        gaps = full[:, chosen[:k]].amin(1)  # (300,) each token's distance from the nearest chosen so far
        assert float(gaps[chosen[k]]) >= 0.99 * float(gaps.max()), k
    assert len(set(chosen)) == 40


def test_a_coreset_keeps_far_outliers_that_float16_could_not_multiply():
    """Two tokens 10^4 and 2 x 10^4 from the others along one axis: their dot product (2 x 10^8) would overflow
    float16 and hide the second; the tokens scaled first, the coreset's first three picks hold both."""
    tokens = torch.randn(200, 32, generator=torch.Generator().manual_seed(7))
    tokens[17, 0], tokens[101, 0] = 1e4, 2e4
    picks = coreset(tokens, 3).tolist()
    assert {17, 101} <= set(picks)


def test_a_coreset_of_projected_tokens_keeps_a_token_of_every_cluster():
    """768-wide tokens in 6 tight clusters far apart, chosen on their 128-dimensional projection: 6 tokens, one of
    each cluster (a random draw of 6 of them misses a cluster 98% of the time)."""
    gen = torch.Generator().manual_seed(4)
    centres = 10 * torch.randn(6, 768, generator=gen)
    cluster = torch.randint(6, (600,), generator=gen)
    tokens = centres[cluster] + 0.1 * torch.randn(600, 768, generator=gen)
    assert sorted(cluster[coreset(tokens, 6)].tolist()) == list(range(6))


def test_a_coreset_bank_holds_its_share_of_the_tokens_and_sets_its_unit_against_them():
    """keep=0.25: a quarter of the reference's tokens (the coreset's, with their images' numbers); the unit is the
    99th percentile of every reference patch's distance from the coreset's patches of the other images. keep=1: the
    whole bank."""
    encoder = PixelTokens()
    batches = [torch.randn(5, 1, 32, 32, generator=torch.Generator().manual_seed(6))]
    whole = build_reference(encoder, batches).banks[0]
    bank = build_reference(encoder, batches, keep=0.25).banks[0]
    kept = coreset(whole.tokens, 20)
    assert torch.equal(bank.tokens, whole.tokens[kept]) and torch.equal(bank.image, whole.image[kept])
    others = torch.cdist(whole.tokens, bank.tokens).masked_fill(whole.image[:, None] == bank.image, float("inf"))
    assert bank.scale == pytest.approx(float(others.amin(1).quantile(0.99)), rel=1e-6)
    assert bank.scale > whole.scale  # the coreset's nearest patches are farther
    assert torch.equal(build_reference(encoder, batches, keep=1.0).banks[0].tokens, whole.tokens)
    with pytest.raises(ValueError, match="coreset 0: give the share"):
        ReferenceImages("good", coreset=0)
    with pytest.raises(ValueError, match="reference images at most: 1; give 2 or more"):
        ReferenceImages("good", max_images=1)


def test_in_four_views_a_painted_patch_lights_the_cells_each_view_saw_it_in():
    """Pixel tokens in 4 views (the grid also moved by half a patch, 4 pixels): a reference image is 0 everywhere
    (each view finds its own view of it); painted over at patch (1, 2), the cells of 4 pixels under the paint are
    lit by every view (the highest), the half-patch ring around them by the shifted views' straddling patches only,
    each cell the mean of the four views' distances; nothing beyond."""
    from openmae.eval.patch_distance import reference_distances

    encoder = PixelTokens()
    reference = torch.randn(6, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    views = build_reference(encoder, [reference], 4)
    painted = reference[:1].clone()
    painted[..., 8:16, 16:24] = 5.0
    got = reference_distances(encoder, torch.cat([reference[:1], painted]), views)  # (2, 8, 8)
    assert torch.equal(got[0], torch.zeros(8, 8))
    lit = torch.zeros(8, 8, dtype=torch.bool)
    lit[1:5, 3:7] = True  # rows 4-20, columns 12-28: half a patch past the paint on each side
    assert torch.equal(got[1] != 0, lit)
    core = torch.zeros(8, 8, dtype=torch.bool)
    core[2:4, 4:6] = True  # the painted cells: each lit by all four views' patches, the ring by one or two
    assert float(got[1][core].min()) > 1.5 * float(got[1][lit & ~core].max())


def test_a_patch_unlike_the_reference_is_lit_at_its_place_and_scores_its_image():
    """A reference image itself: every patch at distance 0 (black). The same with its patch (1, 2) painted over: that
    patch alone is far, in the reference's unit, lit at its pixels, and the image's score."""
    encoder = PixelTokens()
    reference = torch.randn(6, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    bank = build_reference(encoder, [reference]).banks[0]
    painted = reference[:1].clone()
    painted[..., 8:16, 16:24] = 5.0
    imgs = torch.cat([reference[:1], painted])
    shown = distance_map(encoder, imgs, PatchReference([bank], (8, 8)), original=torch.zeros(2, 1, 32, 32))
    assert torch.equal(shown.distances[0], torch.zeros(4, 4))
    far = torch.cdist(painted[..., 8:16, 16:24].reshape(1, 64), bank.tokens).amin() / bank.scale
    assert torch.equal(shown.distances[1] != 0, torch.zeros(4, 4, dtype=torch.bool).index_put_((torch.tensor(1),
                                                                                                torch.tensor(2)),
                                                                                               torch.tensor(True)))
    assert float(shown.distances[1, 1, 2]) == pytest.approx(float(far), rel=1e-5) and far > 2
    torch.testing.assert_close(shown.score, torch.stack([torch.tensor(0.0), far]))
    assert shown.heat.shape == (2, 3, 32, 32) and shown.heat[0].max() < 0.05  # black
    top = heat_colours(torch.full((1, 8, 8), 10.0), 2.0)[0]  # the colour map's brightest: white-yellow
    assert torch.equal(shown.heat[1, :, 8:16, 16:24], top) and shown.heat[1, :, :8].max() < 0.05  # black elsewhere


def test_the_command_draws_distance_maps_against_a_reference_folder(tmp_path, datasets):
    """`visualize --distances REF`: the reference folder's images make the bank (its size and unit logged), each
    picture original | heat map, each image's score logged; a reference of one image is refused."""
    torch.manual_seed(0)
    model = openmae.create_model("mae_vit_debug_patch4_32", img_size=64, patch_size=8)
    ckpt = tmp_path / "encoder.pth"
    torch.save({"model": model.encoder_state_dict(), "model_config": model.cfg.to_dict()}, ckpt)
    photos = sorted((datasets / "imagenet-sample").glob("*.JPEG"))
    reference = tmp_path / "good"
    reference.mkdir()
    for photo in photos[:6]:
        (reference / photo.name).write_bytes(photo.read_bytes())
    proc = call_cli("visualize", "--checkpoint", str(ckpt), str(photos[0]), str(photos[10]), "-o",
                    str(tmp_path / "maps"), "--distances", str(reference))
    assert proc.returncode == 0, proc.stderr
    assert "6 reference images' 384 patch tokens" in proc.stderr
    pngs = sorted((tmp_path / "maps").glob("*.png"))
    assert len(pngs) == 2 and all(np.asarray(Image.open(p)).shape == (128, 2 * 128 + 2, 3) for p in pngs)
    assert f"{photos[0].stem}: farthest patch 0.000 " in proc.stderr  # it is in the reference
    assert f"{photos[10].stem}: farthest patch " in proc.stderr
    rows = (tmp_path / "maps" / "distances.csv").read_text().splitlines()
    assert rows[0] == "picture,farthest_patch" and rows[1].startswith(f"{photos[10].stem}.png,")
    assert rows[2] == f"{photos[0].stem}.png,0.000000"  # the farthest first
    proc = call_cli("visualize", "--checkpoint", str(ckpt), str(photos[10]), "-o", str(tmp_path / "coreset"),
                    "--distances", str(reference), "--reference-images", "4", "--coreset", "0.5")
    assert proc.returncode == 0, proc.stderr
    assert "searching a coreset of 128 of the reference's 256 patch tokens" in proc.stderr
    assert "4 reference images' 128 patch tokens" in proc.stderr
    for flags, message in ((["--coreset", "0.5"], "--coreset, --reference-images, --save-reference and --map-views "
                                                   "set how the reference of --distances is read"),
                           (["--distances", str(reference), "--coreset", "1.5"], "coreset 1.5: give the share")):
        proc = call_cli("visualize", "--checkpoint", str(ckpt), str(photos[10]), "-o", str(tmp_path / "x"), *flags)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / photos[0].name).write_bytes(photos[0].read_bytes())
    proc = call_cli("visualize", "--checkpoint", str(ckpt), str(photos[0]), "-o", str(tmp_path / "none"),
                    "--distances", str(lone))
    assert proc.returncode == 1 and "the reference holds fewer than two images" in proc.stderr


def test_evaluate_scores_each_image_by_its_farthest_patch_from_reference_images(tmp_path, datasets):
    """`evaluate` of a pretrained MAE with evaluate.reference_images: each image's farthest patch (as visualize
    --distances measures it) joins the CSV and the JSON (its mean, the share beyond the reference's 99th percentile),
    the log names the highest, rank_by=farthest_patch orders --plot; without reference images that ranking is
    refused."""
    import csv
    import json

    from openmae.data.build import eval_batches
    from openmae.data.config import DataConfig
    from openmae.data.normalization import IMAGENET_MEAN, IMAGENET_STD
    from openmae.engine.task_config import EvaluateSection
    from openmae.eval.patch_distance import farthest, read_reference, reference_distances

    ckpt, model, photos, reference, queries, data = reference_case(tmp_path, datasets, slice(None, 12),
                                                                   slice(10, 16))
    proc = call_cli("evaluate", "--checkpoint", str(ckpt), *data, f"evaluate.reference_images={reference}",
                    "evaluate.rank_by=farthest_patch", "--predictions", str(tmp_path / "scores.csv"), "--plot",
                    str(tmp_path / "farthest.png"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    drawn = np.asarray(Image.open(tmp_path / "farthest.png"))  # 6 rows of original | distance map, as visualize's
    assert drawn.shape[1] == 2 * 128 + 2 and drawn.shape[0] > 5 * 128 and "original | each patch's distance" in \
        proc.stderr
    rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
    got = {r["image"].rsplit("/", 1)[-1]: float(r["farthest_patch"]) for r in rows}
    mean, std = tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)  # what a file recording none is read with
    d = DataConfig(name="folder", path=str(queries), num_workers=0, mean=list(mean), std=list(std))
    bank = read_reference(model, ReferenceImages(str(reference)), d, (32, 32), 3, mean, std)
    images = next(iter(eval_batches(d, "train", (32, 32), 3, 6))).images
    want = farthest(reference_distances(model, images, bank))
    assert sorted(got) == [p.name for p in photos[10:16]]
    np.testing.assert_allclose([got[p.name] for p in photos[10:16]], want.numpy(), rtol=1e-5, atol=1e-6)
    assert got[photos[10].name] == 0 and got[photos[11].name] == 0  # in the reference: their own patches are there
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["farthest_patch"] == pytest.approx(float(want.mean()), rel=1e-5)
    assert result["beyond_reference"] == pytest.approx(float((want > 1).double().mean()))
    top = photos[10 + int(want.argmax())].name
    named = proc.stderr.split("highest farthest patch (from the reference images' patches): ")[1].split(" (")[0]
    assert named.endswith(top)  # the highest first
    refused = call_cli("evaluate", "--checkpoint", str(ckpt), *data, "evaluate.rank_by=farthest_patch")
    assert refused.returncode != 0 and "evaluate.rank_by=farthest_patch needs evaluate.reference_images" in \
        refused.stderr
    # at most 8 of the reference's images, a third of their patch tokens searched
    proc = call_cli("evaluate", "--checkpoint", str(ckpt), *data, f"evaluate.reference_images={reference}",
                    "evaluate.reference_max_images=8", "evaluate.reference_coreset=0.3", "--predictions",
                    str(tmp_path / "coreset.csv"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "searching a coreset of 154 of the reference's 512 patch tokens" in proc.stderr  # 8 images of 64
    rows = list(csv.DictReader((tmp_path / "coreset.csv").open()))
    got = {r["image"].rsplit("/", 1)[-1]: float(r["farthest_patch"]) for r in rows}
    want = farthest(reference_distances(model, images, read_reference(model, ReferenceImages(str(reference), 8, 0.3),
                                                                      d, (32, 32), 3, mean, std)))
    np.testing.assert_allclose([got[p.name] for p in photos[10:16]], want.numpy(), rtol=1e-5, atol=1e-6)
    assert EvaluateSection().reference_max_images == patch_distance.REFERENCE_IMAGES  # the setting's default
    refused = call_cli("evaluate", "--checkpoint", str(ckpt), *data, "evaluate.reference_coreset=0.3")
    assert refused.returncode != 0 and "evaluate.reference_coreset=0.3 sets how evaluate.reference_images are " \
        "searched, and none are given" in refused.stderr


def test_evaluate_tells_defect_classes_from_the_normal_class_by_each_score(tmp_path, datasets):
    """An MVTec AD layout (train/good, test/good, test/<defect>): evaluate.normal_class=good gives each score's
    ROC-AUC of telling the defect images from the good ones, over all and per defect class, equal to the ranking
    of the CSV's scores; good test images that are reference images (farthest patch 0) against other photos: 100.
    Refused for unlabelled images and for a class that is not there."""
    import csv
    import json

    from openmae.eval.ranking import roc_auc

    ckpt = tmp_path / "mae.pth"
    debug_mae_file(ckpt)
    photos = sorted((datasets / "imagenet-sample").glob("*.JPEG"))
    photo_folders(tmp_path / "part", {"train/good": photos[:8], "test/good": photos[:4], "test/crack": photos[300:303],
                                      "test/scratch": photos[600:602]})
    data = ["data.name=imagefolder", f"data.path={tmp_path / 'part'}", "data.num_workers=0"]
    proc = call_cli("evaluate", "--checkpoint", str(ckpt), *data, f"evaluate.reference_images={tmp_path / 'part/train/good'}",
                    "evaluate.normal_class=good", "-o", str(tmp_path / "out.json"), "--predictions",
                    str(tmp_path / "scores.csv"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads((tmp_path / "out.json").read_text())
    rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
    kind = np.array([r["image"].split("/")[-2] for r in rows])
    for score in ("loss", "relative_loss", "farthest_patch"):
        values = np.array([float(r[score]) for r in rows])
        assert out[f"detection_auc_{score}"] == pytest.approx(100 * roc_auc(values, kind != "good"), abs=1e-3)
        for defect in ("crack", "scratch"):
            kept = (kind == "good") | (kind == defect)
            assert out["detection_auc_per_class"][defect][score] == pytest.approx(
                100 * roc_auc(values[kept], kind[kept] == defect), abs=1e-3)
    assert out["detection_auc_farthest_patch"] == 100.0 and out["normal_class"] == "good"
    assert "telling the 5 images of other classes from the 4 of good" in proc.stderr
    for settings, message in ((["data.name=folder", f"data.path={tmp_path / 'part/test'}"], "needs images with one "
                               "class each"),
                              ([*data[:2], "evaluate.normal_class=ok"], "the images' classes are ['crack', 'good', "
                               "'scratch']")):
        refused = call_cli("evaluate", "--checkpoint", str(ckpt), *settings, "data.num_workers=0",
                           *(["evaluate.normal_class=good"] if "ok" not in settings[-1] else []))
        assert refused.returncode != 0 and message in refused.stderr, refused.stderr[-1500:]


def test_the_bank_is_searched_on_the_encoders_gpu_where_it_fits_else_on_the_cpu(monkeypatch, caplog):
    """1,000 ViT-B/16 images' 196,000 tokens of width 768 (0.6 GB, 1.0 GB with a coreset's projections and two blocks
    of distances): on an encoder's GPU with 2 GiB free, on the CPU with 0.5 GiB (said why); an encoder on the CPU
    keeps it there. The kNN's search decides by the same rule."""

    class OnGpu(torch.nn.Module):  # an encoder whose weights the search takes to be on a GPU (none here)
        def parameters(self, recurse: bool = True):
            yield type("Weight", (), {"device": torch.device("cuda", 0)})()

    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 << 30, 80 << 30))
    assert patch_distance.search_device(196_000, 768, OnGpu()) == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 << 29, 80 << 30))
    with caplog.at_level("WARNING"):
        assert patch_distance.search_device(196_000, 768, OnGpu()) == torch.device("cpu")
    assert "the search of the reference's patch tokens runs on the CPU: its 196000 tokens of width 768 need 1.0 GB" \
        in caplog.text
    assert patch_distance.search_device(196_000, 768, torch.nn.Linear(2, 2)) == torch.device("cpu")
