"""``openmae visualize``'s options: what the pictures show (reconstructions, error, feature or distance maps) and
how the reference of distance maps is read."""

from __future__ import annotations

import argparse


def heat_scale(text: str) -> float:
    """``--errors MAX``: a squared error > 0 (what follows --errors is taken for it: an image path is not one)."""
    try:
        value: float | None = float(text)
    except ValueError:
        value = None
    if value is None or not value > 0:
        raise argparse.ArgumentTypeError(f"{f'{text!r} is no number' if value is None else f'--errors={value}'}: "
                                         "--errors takes the squared error at which the heat map is brightest, > 0 "
                                         "(1, one standard deviation of the data, when nothing follows it); put images "
                                         "and data.* settings before --errors")
    return value


def add_visualize_flags(p: argparse.ArgumentParser) -> None:
    """The options of ``openmae visualize`` beyond ``--checkpoint``."""
    p.add_argument("images", nargs="*",
                   help="image files, folders and/or CSV lists of images (or give data.name=... instead)")
    p.add_argument("--count", type=int, help="how many pictures: of a dataset (default 8), or of the files and "
                   "folders given (default all; spread evenly over them)")
    p.add_argument("--out", "-o", default="reconstructions", help="folder for the PNGs")
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bands", type=int, nargs="+", default=[], metavar="B",
                   help="channels to show: one (grey) or three (red, green, blue), e.g. 3 2 1; default the "
                        "first three")
    drawn = p.add_mutually_exclusive_group()
    drawn.add_argument("--errors", type=heat_scale, nargs="?", const=1.0, metavar="MAX",
                       help="error maps instead: original | every patch reconstructed (while removed, by "
                            "passes whose masks cover the image) | each pixel's squared error, black 0 to "
                            "white-yellow MAX (default 1: an error of one standard deviation of the data)")
    drawn.add_argument("--features", action="store_true",
                       help="feature maps instead: original | each patch coloured by its features' first three "
                            "principal components (fitted over the images shown); any encoder, no decoder "
                            "needed")
    drawn.add_argument("--distances", metavar="REFERENCE",
                       help="distance maps instead: original | each patch's distance from the nearest patch "
                            "of the reference images (a folder or CSV list of images like the training ones, "
                            "up to 1,000; or a .safetensors file --save-reference kept), black 0 to "
                            "white-yellow 2 (1: the reference's own 99th percentile); each image's farthest "
                            "patch in the log and distances.csv; any encoder")
    p.add_argument("--reference-images", type=int, metavar="N",
                   help="--distances: read at most N reference images, spread evenly (default 1,000)")
    p.add_argument("--coreset", type=float, metavar="SHARE",
                   help="--distances: search a greedy coreset of this share of the reference's patch tokens "
                        "(every token near one kept; 0.1: the search 10x faster), default 1: all")
    p.add_argument("--map-views", type=int, metavar="N",
                   help="--distances: read each image and reference image in N = k x k views of the patch grid "
                        "(4: also moved by half a patch), each against the reference read at its shift, the maps "
                        "averaged on a finer grid (half-patch cells for 4 views of an even patch); N times the "
                        "passes and searches (default 1; a kept reference: its own)")
    p.add_argument("--save-reference", metavar="FILE",
                   help="--distances: keep the reference's patch tokens in FILE (.safetensors), which a later "
                        "--distances FILE reads instead of the images (the same encoder and settings)")
