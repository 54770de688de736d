"""MVTec AD's table for one pretrained MAE: each category of a folder laid out as MVTec AD's
(``<root>/<category>/train/good/``, ``test/good/``, ``test/<defect>/``, ``ground_truth/<defect>/<image>_mask.png``)
measured by `openmae evaluate` with the category's training images as the reference: the image ROC-AUC of the
farthest patch and of the error map's peak, the pixel ROC-AUC and the per-region overlap (PRO, up to 30% false
positives) of the distance maps and of the error maps, and their means over the categories, as the command reports
them. The whole image is seen (``data.eval_crop_pct=1``). ``--maps DIR`` keeps every map for MVTec AD's own evaluation script
(``DIR/<category>/test/<defect>/<image>.tiff``: its ``--anomaly_maps_dir DIR``).

    python benchmarks/mvtec.py /data/mvtec_anomaly_detection --checkpoint mae.pth --json results_mvtec.json
    python benchmarks/mvtec.py /data/mvtec_anomaly_detection --checkpoint mae.pth --categories bottle screw \\
        --coreset 0.1 --maps maps -- model.img_size=224 evaluate.map_sigma=4
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

from defect_folder import evaluate  # the command and its JSON

COLUMNS = {"image ROC-AUC": "detection_auc_farthest_patch", "image, error-map peak": "detection_auc_error_map_peak",
           "pixel ROC-AUC, distance map": "pixel_auc_distance_map",
           "PRO, distance map": "pro_distance_map", "pixel ROC-AUC, error map": "pixel_auc_error_map",
           "PRO, error map": "pro_error_map"}


def categories(root: Path) -> list[str]:
    """The folders of ``root`` laid out as an MVTec AD category (train/good, test, ground_truth), sorted."""
    return sorted(p.name for p in root.iterdir() if (p / "train" / "good").is_dir() and (p / "test").is_dir()
                  and (p / "ground_truth").is_dir())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="the MVTec AD folder (one folder a category)")
    parser.add_argument("--checkpoint", required=True, help="a pretrained MAE (encoder and decoder)")
    parser.add_argument("--categories", nargs="*", default=None, help="these only (default: every category found)")
    parser.add_argument("--coreset", type=float, default=1.0, help="the share of the reference's tokens searched")
    parser.add_argument("--maps", default="", help="keep every map here, in MVTec AD's layout")
    parser.add_argument("--json", default="", help="write the numbers here")
    parser.add_argument("settings", nargs="*", help="more settings of the command (after --)")
    args = parser.parse_args(argv)
    root = Path(args.root)
    chosen = args.categories or categories(root)
    if not chosen:
        raise SystemExit(f"no MVTec AD category in {root}: each needs train/good/, test/ and ground_truth/")
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in chosen:
            extra = ["data.eval_crop_pct=1", f"evaluate.reference_coreset={args.coreset}", *args.settings]
            if args.maps:
                extra.append(f"evaluate.save_maps={Path(args.maps) / name / 'test'}")
            got = evaluate(args.checkpoint, root / name, Path(tmp) / "out.json", *extra)
            rows[name] = {**{key: got.get(key, math.nan) for key in COLUMNS.values()}, "samples": got["samples"],
                          "seconds": got["seconds"]}
            print(f"[mvtec] {name}: {json.dumps(rows[name])}", flush=True)
    mean = {key: sum(r[key] for r in rows.values()) / len(rows) for key in COLUMNS.values()}
    print("\n| category | " + " | ".join(COLUMNS) + " |\n|---|" + "---|" * len(COLUMNS))
    for name, row in [*rows.items(), ("mean", mean)]:
        print(f"| {name} | " + " | ".join(f"{row[key]:.1f}" for key in COLUMNS.values()) + " |")
    results = {"checkpoint": args.checkpoint, "root": str(root), "coreset": args.coreset, "settings": args.settings,
               "categories": rows, "mean": mean}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
