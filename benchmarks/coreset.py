"""What searching a coreset of the reference's patch tokens (`visualize --distances --coreset`,
`evaluate.reference_coreset`) costs in finding foreign patches, and what it saves. The setting of
`benchmarks/error_maps.py`: Fashion-MNIST test images with a square of a grey CIFAR-10 photo pasted in, each patch
scored by its MAE token's distance from the nearest patch token of ``--reference`` training images; the reference
searched whole and as greedy coresets of a share of its tokens (`openmae.eval.patch_distance.coreset`).

Per share, the coreset and, as a control, as many tokens drawn at random: the pasted-into images' ROC-AUC against
the same images untouched (each image's farthest patch), the pasted pixels' ROC-AUC against the other pixels of the
same images, the seconds to choose the coreset, the seconds to search the images' patches, and the reference's unit
(the 99th percentile of its patches' distances from the other images' patches in the bank).

    python benchmarks/coreset.py runs/error_maps/fm_pixels_15/model-last.pth --json docs/results_coreset.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from error_maps import arguments, case, measure  # the same options, pasted squares and ROC-AUCs

from openmae.data.build import eval_batches
from openmae.eval.feature_map import patch_tokens
from openmae.eval.patch_distance import PatchBank, bank_from, bank_of, nearest


def tokens_of(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The patch tokens (N, h, w, D) of normalised ``images``, 250 at a time."""
    return torch.cat([patch_tokens(model, part) for part in images.split(250)])


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--shares", default="1,0.25,0.1,0.03,0.01", help="coreset shares, comma-separated")
    args = parser.parse_args()
    shares = [float(s) for s in args.shares.split(",")]
    results: dict = {"images": args.images, "reference": args.reference, "size": args.size, "seed": args.seed,
                     "threads": torch.get_num_threads(), "models": {}}
    for path in args.checkpoints:
        c = case(path, args)
        model, size, p = c.model, c.model.cfg.img_size, c.model.cfg.patch_size
        reference = tokens_of(model, torch.cat([b.images for b in eval_batches(c.data, "train", size, 1, 250,
                                                                                args.reference)]))
        foreign, clean, where = c.foreign, c.clean, c.where
        queries = {name: tokens_of(model, imgs) for name, imgs in (("pasted", foreign), ("clean", clean))}
        rows = {}
        whole = bank_of(reference)
        for share, kind in [(s, k) for s in shares for k in (("coreset", "random") if s < 1 else ("coreset",))]:
            began = time.perf_counter()
            if kind == "coreset":
                bank = bank_from(reference, args.seed, share)
            else:  # the control: as many tokens drawn at random
                drawn = torch.randperm(len(whole.tokens), generator=torch.Generator().manual_seed(args.seed))
                drawn = drawn[: max(1, round(share * len(whole.tokens)))]
                bank = PatchBank(whole.tokens[drawn], whole.image[drawn], 1.0)  # its unit: no matter to an AUC
            chosen_s = time.perf_counter() - began
            began = time.perf_counter()
            maps = {}
            for name, q in queries.items():
                distances = nearest(q.flatten(0, 2), bank).reshape(q.shape[:3]) / bank.scale  # as the command
                maps[name] = F.interpolate(distances[:, None], scale_factor=p)[:, 0]  # (N, H, W)
            searched_s = time.perf_counter() - began
            key = str(share) if kind == "coreset" else f"{share} random"
            rows[key] = {**measure(maps["pasted"], maps["clean"], where, image="max"),
                                "bank_tokens": len(bank.tokens), "bank_s": round(chosen_s, 2),
                                "search_ms_per_image": round(1000 * searched_s / (2 * args.images), 3),
                                "unit": round(bank.scale, 4)}
            print(f"[coreset] {Path(path).parent.name} share {key}: {json.dumps(rows[key])}", flush=True)
        results["models"][Path(path).parent.name] = {"checkpoint": path, "reference_tokens": reference.shape[0] *
                                                     reference.shape[1] * reference.shape[2], "shares": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
