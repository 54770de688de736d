"""Shifted views of the patch grid (`evaluate.map_views`, `visualize --map-views`): the shifts, the shifted images,
each view's patch values put back on the finer grid, the views' distances averaged, the command."""

import csv
import json

import numpy as np
import pytest
import torch
from helpers import call_cli, reference_case

import openmae
from openmae.engine.task_config import EvaluateSection
from openmae.eval.grid_views import averaged, cell_size, grid_steps, put_back, shifted, view_shifts
from openmae.eval.patch_distance import (
    PatchReference,
    ReferenceImages,
    build_reference,
    patch_distances,
    reference_distances,
)


def test_the_views_shift_the_grid_by_fractions_of_a_patch_on_cells_that_divide_every_shift():
    assert view_shifts(1, (16, 16)) == [(0, 0)] and cell_size(1, (16, 16)) == (16, 16)
    assert view_shifts(4, (16, 16)) == [(0, 0), (0, 8), (8, 0), (8, 8)] and cell_size(4, (16, 16)) == (8, 8)
    assert view_shifts(9, (9, 6)) == [(0, 0), (0, 2), (0, 4), (3, 0), (3, 2), (3, 4), (6, 0), (6, 2), (6, 4)]
    assert cell_size(9, (9, 6)) == (3, 2) and cell_size(16, (16, 16)) == (4, 4)
    assert view_shifts(4, (7, 7))[-1] == (3, 3) and cell_size(4, (7, 7)) == (1, 1)  # an odd patch: pixels
    assert [b for _, b in view_shifts(9, (16, 16))[:3]] == [0, 5, 10] and cell_size(9, (16, 16)) == (1, 1)
    assert grid_steps(16, (16, 16)) == 4
    with pytest.raises(ValueError, match=r"map views 3: give a square number of views of the patch grid, k x k"):
        grid_steps(3, (16, 16))
    with pytest.raises(ValueError, match=r"patches moved by 1/5 of a patch; give at most 16 views \(a pixel apart\)"):
        view_shifts(25, (4, 8))
    with pytest.raises(ValueError, match="map views 2: give a square number"):
        ReferenceImages("good", views=2)
    with pytest.raises(ValueError, match="evaluate.map_views"):
        EvaluateSection(map_views=8).check()


def test_a_shifted_view_is_the_image_moved_up_and_left_with_the_uncovered_edges_reflected():
    imgs = torch.randn(2, 3, 12, 10, generator=torch.Generator().manual_seed(0))
    assert shifted(imgs, (0, 0)) is imgs
    for dy, dx in ((3, 0), (0, 5), (4, 2)):
        out = shifted(imgs, (dy, dx))
        assert out.shape == imgs.shape
        torch.testing.assert_close(out[..., : 12 - dy, : 10 - dx], imgs[..., dy:, dx:], rtol=0, atol=0)
        want = np.pad(imgs.numpy(), ((0, 0), (0, 0), (0, dy), (0, dx)), mode="reflect")[..., dy:, dx:]
        np.testing.assert_array_equal(out.numpy(), want)  # numpy's reflection: the edge row itself not repeated


def test_a_views_patch_values_go_back_on_the_cells_each_patch_covered():
    """By index arithmetic, cell by cell: the cell (r, c) of a view shifted by (a, b) cells takes the value of the
    view's patch ((r - a) // f, (c - b) // g) (f x g cells a patch), the cells before its first patch NaN; the
    average of views is over those that reach each cell."""
    values = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1))
    for views, patch in ((4, (8, 8)), (16, (8, 4)), (4, (7, 7)), (9, (6, 9))):
        cell = cell_size(views, patch)
        f, g = patch[0] // cell[0], patch[1] // cell[1]  # cells a patch, down and across
        for shift in view_shifts(views, patch):
            a, b = shift[0] // cell[0], shift[1] // cell[1]
            got = put_back(values, shift, patch, cell)
            assert got.shape == (2, 3 * f, 4 * g)
            want = torch.full((2, 3 * f, 4 * g), float("nan"))
            for r in range(a, 3 * f):
                for c in range(b, 4 * g):
                    want[:, r, c] = values[:, (r - a) // f, (c - b) // g]
            torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True, msg=str((views, patch, shift)))
    first, second = torch.ones(1, 2, 2), torch.tensor([[[float("nan"), 3.0], [5.0, 7.0]]])
    assert torch.equal(averaged([first, second]), torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]))


def test_the_views_distances_are_each_views_own_search_averaged_on_the_finer_grid():
    """A debug MAE (patch 4) in 4 views: the reference holds a bank per view (the reference images read at that
    view's shift, each its own unit); an image's distances on the 16 x 16 grid are the mean, cell by cell, of the
    views' patch distances of the patches that covered the cell (the first row and column: of the two views that
    reach it). One view: the plain patch distances."""
    torch.manual_seed(0)
    model = openmae.create_model("mae_vit_debug_patch4_32")
    gen = torch.Generator().manual_seed(2)
    reference, imgs = torch.randn(5, 3, 32, 32, generator=gen), torch.randn(3, 3, 32, 32, generator=gen)
    views = build_reference(model, [reference[:3], reference[3:]], 4)
    assert views.views == 4 and views.patch == (4, 4) and views.banks[0].images == 5 and views.token_count == 4 * 5 * 64
    got = reference_distances(model, imgs, views)
    assert got.shape == (3, 16, 16)
    total, count = torch.zeros(3, 16, 16), torch.zeros(16, 16)
    for bank, (dy, dx) in zip(views.banks, view_shifts(4, (4, 4)), strict=True):
        alone = build_reference(model, [shifted(reference, (dy, dx))]).banks[0]
        assert torch.equal(bank.tokens, alone.tokens) and bank.scale == alone.scale
        d = patch_distances(model, shifted(imgs, (dy, dx)), bank)  # (3, 8, 8)
        a, b = dy // 2, dx // 2  # the shift in cells of 2 pixels
        for r in range(a, 16):
            for c in range(b, 16):
                total[:, r, c] += d[:, (r - a) // 2, (c - b) // 2]
                count[r, c] += 1
    assert count[0, 0] == 1 and count[0, 1] == count[1, 0] == 2 and count[1, 1] == 4
    torch.testing.assert_close(got, total / count, rtol=1e-6, atol=1e-6)
    one = build_reference(model, [reference], 1)
    assert torch.equal(reference_distances(model, imgs, one), patch_distances(model, imgs, one.banks[0]))
    with pytest.raises(ValueError, match=r"give at most 16 views"):
        build_reference(model, [reference], 25)


def test_evaluate_and_visualize_search_in_views_and_keep_each_views_bank(tmp_path, datasets):
    """`evaluate.map_views=4`: each image's farthest patch the highest cell of its four views' averaged distances
    (against the reference read in the same views), the reference kept with a bank a view; the kept file searched
    again by `visualize --distances` in its own four views gives the same scores; refused: views that are no square,
    more views than a patch has pixels across, other views than a kept file's, views without reference images."""
    from openmae.data.build import eval_batches
    from openmae.data.config import DataConfig
    from openmae.data.normalization import IMAGENET_MEAN, IMAGENET_STD
    from openmae.eval.patch_distance import farthest, read_reference
    from openmae.eval.reference_file import bank_summary, format_bank

    ckpt, model, photos, reference, queries, data = reference_case(tmp_path, datasets, slice(None, 6),
                                                                   slice(20, 24))
    kept = tmp_path / "kept.safetensors"
    proc = call_cli("evaluate", "--checkpoint", str(ckpt), *data, f"evaluate.reference_images={reference}",
                    "evaluate.map_views=4", f"evaluate.save_reference={kept}", "--predictions",
                    str(tmp_path / "scores.csv"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "in 4 views of the patch grid" in proc.stderr and "each view's against its own 384" in proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["map_views"] == 4
    rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
    got = {r["image"].rsplit("/", 1)[-1]: float(r["farthest_patch"]) for r in rows}
    mean, std = tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)
    d = DataConfig(name="folder", path=str(queries), num_workers=0, mean=list(mean), std=list(std))
    views = read_reference(model, ReferenceImages(str(reference), views=4), d, (32, 32), 3, mean, std)
    images = next(iter(eval_batches(d, "train", (32, 32), 3, 4))).images
    want = farthest(reference_distances(model, images, views))
    np.testing.assert_allclose([got[p.name] for p in photos[20:24]], want.numpy(), rtol=1e-5, atol=1e-6)
    plain = farthest(reference_distances(model, images, PatchReference(views.banks[:1], (4, 4))))
    assert not torch.allclose(want, plain)  # the views changed the scores
    summary = bank_summary(str(kept))
    assert summary["views"] == 4 and summary["version"] == 2 and len(summary["scales"]) == 4
    assert "in 4 views of the patch grid" in format_bank(summary)

    proc = call_cli("visualize", "--checkpoint", str(ckpt), "--distances", str(kept), "-o", str(tmp_path / "drawn"),
                    *[str(queries / p.name) for p in photos[20:24]])
    assert proc.returncode == 0, proc.stderr[-2000:]
    drawn = {r["picture"]: float(r["farthest_patch"]) for r in csv.DictReader((tmp_path / "drawn/distances.csv").open())}
    np.testing.assert_allclose([drawn[f"{p.stem}.png"] for p in photos[20:24]], want.numpy(), rtol=1e-5, atol=1e-6)

    for extra, message in (
            ((f"evaluate.reference_images={kept}", "evaluate.map_views=9"),
             "was kept in 4 view(s) of the patch grid, and 9 are asked for"),
            ((f"evaluate.reference_images={reference}", "evaluate.map_views=25"), "give at most 16 views"),
            (("evaluate.map_views=2",), "evaluate.map_views"),
            (("evaluate.map_views=4",), "evaluate.map_views=4 sets how evaluate.reference_images are searched")):
        refused = call_cli("evaluate", "--checkpoint", str(ckpt), *data, *extra)
        assert refused.returncode != 0 and message in refused.stderr, (extra, refused.stderr[-1500:])
    refused = call_cli("visualize", "--checkpoint", str(ckpt), "--map-views", "4", str(queries / photos[20].name))
    assert refused.returncode != 0 and "--map-views set how the reference of --distances is read" in refused.stderr
