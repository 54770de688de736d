"""The paper's ablation trends at small scale, on Fashion-MNIST: mask ratio 25 / 50 / 75 / 90%, norm_pix on
vs off, decoder depth 1 vs 4. Every variant gets the same pretraining budget and the same evaluations
(kNN, cached linear probe of the last block, short fine-tuning); the base variant (75%, pixels, depth 4) is
shared by the three ablations.

    python benchmarks/ablations.py --out runs/ablations --pretrain-epochs 2     # ~35 min on 2 cores
    python benchmarks/ablations.py --out /tmp/abl --smoke                       # minutes, to check the script

Writes <out>/results.json step by step (a re-run continues), <out>/ablations.md (the table) and
<out>/mask_ratio.png (accuracy against mask ratio).
"""

from __future__ import annotations

from pathlib import Path

from protocol import REPO, Protocol, arguments

from openmae.eval.plots import setting_curve

MODEL = ["model.name=mae_vit_tiny_patch7_28_gray", "model.depth=6"]
BASE = {"mask_ratio": 0.75, "norm_pix_loss": False, "decoder_depth": 4}
VARIANTS = {
    "mask25": {"mask_ratio": 0.25}, "mask50": {"mask_ratio": 0.5}, "base": {}, "mask90": {"mask_ratio": 0.9},
    "normpix": {"norm_pix_loss": True}, "decoder1": {"decoder_depth": 1},
}
METRICS = ("knn", "probe", "finetune")


def overrides(variant: dict) -> list[str]:
    v = {**BASE, **variant}
    return [f"pretrain.mask_ratio={v['mask_ratio']}", f"model.norm_pix_loss={str(v['norm_pix_loss']).lower()}",
            f"model.decoder_depth={v['decoder_depth']}"]


def table(results: dict) -> str:
    rows = ["| variant | mask ratio | norm_pix | decoder depth | final loss | kNN | linear probe | fine-tuning |",
            "|---|---|---|---|---|---|---|---|"]
    for name, variant in VARIANTS.items():
        v = {**BASE, **variant}
        cells = [f"{results.get(f'{name}_{m}', float('nan')):.2f}" for m in METRICS]
        rows.append(f"| {name} | {v['mask_ratio']:.2f} | {v['norm_pix_loss']} | {v['decoder_depth']} | "
                    f"{results.get(f'{name}_loss', float('nan')):.3f} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def mask_ratio_plot(results: dict, path: Path) -> None:
    names = ["mask25", "mask50", "base", "mask90"]
    ratios = [100 * {**BASE, **VARIANTS[n]}["mask_ratio"] for n in names]
    series = {m: [results.get(f"{n}_{m}", float("nan")) for n in names] for m in METRICS}
    setting_curve(ratios, series, path, "mask ratio (%)", title="Fashion-MNIST, equal pretraining budget")


def main() -> None:
    parser = arguments(__doc__, "runs/ablations", 2, 1)
    parser.add_argument("--pretrain-samples", type=int, default=0, help="training images for pretraining (0 = all)")
    parser.add_argument("--finetune-samples", type=int, default=10000, help="training images for fine-tuning")
    parser.add_argument("--eval-samples", type=int, nargs=2, default=[20000, 5000],
                        help="training and test images for kNN and the probe")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    limit = ["data.max_samples=2000", "data.max_eval_samples=500"] if args.smoke else []
    pre_epochs = 1 if args.smoke else args.pretrain_epochs
    p = Protocol("fashion-mnist", args.data_root, Path(args.out), MODEL, REPO / "configs/pretrain/fashion_mnist.yaml",
                 REPO / "configs/finetune/fashion_mnist.yaml", limit=limit, workers=args.workers,
                 eval_limit=[] if args.smoke else [f"data.max_samples={args.eval_samples[0]}",
                                                   f"data.max_eval_samples={args.eval_samples[1]}"])
    for name in args.variants:
        pre_limit = [f"data.max_samples={args.pretrain_samples}"] if args.pretrain_samples and not args.smoke else []
        ckpt = p.pretrain(name, pre_epochs, overrides(VARIANTS[name]) + pre_limit)
        p.knn(f"{name}_knn", ckpt)
        p.probe(f"{name}_probe", ckpt)
        ft_limit = [] if args.smoke else [f"data.max_samples={args.finetune_samples}",
                                          f"data.max_eval_samples={args.eval_samples[1]}"]
        p.finetune(f"{name}_finetune", ckpt, 1 if args.smoke else args.finetune_epochs, ft_limit)
    (p.out / "ablations.md").write_text(table(p.results))
    mask_ratio_plot(p.results, p.out / "mask_ratio.png")
    print(table(p.results))


if __name__ == "__main__":
    main()
