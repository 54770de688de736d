"""Each image's map kept as a float32 TIFF at the image's size (`evaluate.save_maps`, MVTec AD's layout): put back
where the evaluation's centre crop lay, so that the evaluation's own resize and crop of the file give the map again."""


import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from helpers import call_cli, debug_mae_file, photo_folders
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from openmae.eval.map_files import in_original_frame, map_file, resized_size


def evaluation_geometry(values: torch.Tensor, img_size: tuple[int, int], crop: float) -> torch.Tensor:
    """What the evaluation does to an image (H0, W0): resize to img_size / crop (the short side, for a square input)
    and cut out the centre; bilinear, as a map is resampled."""
    resize = tuple(int(s / crop) for s in img_size)
    geometry = T.Compose([T.Resize(resize if img_size[0] != img_size[1] else resize[0],
                                   interpolation=InterpolationMode.BILINEAR, antialias=False), T.CenterCrop(img_size)])
    return geometry(values[None])[0]


@pytest.mark.parametrize("original", [(48, 64), (64, 48), (40, 40), (300, 200)])
@pytest.mark.parametrize(("img_size", "crop"), [((32, 32), 1.0), ((32, 32), 0.875), ((16, 24), 0.9)])
def test_a_kept_map_through_the_evaluations_resize_and_crop_is_the_map_again(original, img_size, crop):
    """A smooth map (a 4 x 4 random grid spread bilinearly) put into images of four shapes, three input geometries:
    its size is the image's, the evaluation's resize and crop of it give the map back within 3% of its range away
    from the edges, and the margins the crop left out hold the map's lowest value."""
    gen = torch.Generator().manual_seed(sum(original) + img_size[1])
    values = F.interpolate(torch.rand(1, 1, 4, 4, generator=gen), size=img_size, mode="bilinear",
                           align_corners=False)[0, 0]
    frame = in_original_frame(values, original, img_size, crop)
    assert frame.shape == original and frame.dtype == torch.float32
    back = evaluation_geometry(frame, img_size, crop)
    inner = (slice(2, -2), slice(2, -2))
    assert float((back[inner] - values[inner]).abs().max()) < 0.03 * float(values.max() - values.min())
    h, w = resized_size(original, img_size, crop)
    if crop < 1 and h > img_size[0] + 8:  # a margin of more than 4 resized rows above and below: the lowest value
        assert torch.allclose(frame[0], torch.full_like(frame[0], float(values.min())))


def test_evaluate_keeps_each_images_map_as_a_tiff_at_its_size(tmp_path, datasets):
    """MVTec AD's layout, good test images that are reference images: each test image's distance map in
    <maps>/<class>/<image>.tiff, float32 at the photo's size as tifffile reads it (MVTec AD's script's reader), zero
    for the reference's own images; without reference images the error maps, not zero. Images held in memory are
    refused."""
    ckpt = tmp_path / "mae.pth"
    debug_mae_file(ckpt)
    photos = sorted((datasets / "imagenet-sample").glob("*.JPEG"))
    part = tmp_path / "part"
    photo_folders(part, {"train/good": photos[:4], "test/good": photos[:2], "test/crack": photos[300:302]})
    data = ["data.name=imagefolder", f"data.path={part}", "data.num_workers=0"]
    proc = call_cli("evaluate", "--checkpoint", str(ckpt), *data, f"evaluate.reference_images={part / 'train/good'}",
                    f"evaluate.save_maps={tmp_path / 'maps'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "each image's distance map kept at its size" in proc.stderr
    for photo, kind in ((photos[0], "good"), (photos[1], "good"), (photos[300], "crack"), (photos[301], "crack")):
        kept = tifffile.imread(map_file(tmp_path / "maps", part / "test" / kind / photo.name))
        with Image.open(photo) as img:
            assert kept.shape == (img.height, img.width) and kept.dtype == np.float32
        assert (kept.max() == 0) == (kind == "good"), (photo.name, kept.max())  # the reference's own: distance 0
    proc = call_cli("evaluate", "--checkpoint", str(ckpt), *data, f"evaluate.save_maps={tmp_path / 'errors'}",
                    "evaluate.map_sigma=1.5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "each image's error map kept at its size" in proc.stderr
    assert tifffile.imread(tmp_path / "errors" / "good" / f"{photos[0].stem}.tiff").max() > 0
    refused = call_cli("evaluate", "--checkpoint", str(ckpt), "--data-root", str(datasets), "data.name=fashion-mnist",
                       "data.max_eval_samples=4", "model.in_chans=1", f"evaluate.save_maps={tmp_path / 'no'}")
    assert refused.returncode != 0 and "these images are held in memory (data.name=fashion-mnist)" in refused.stderr, \
        refused.stderr[-1500:]
