"""The paper's ablation trends at small scale, on Fashion-MNIST: mask ratio 25 / 50 / 75 / 90%, norm_pix on
vs off, decoder depth 1 vs 4. Every variant gets the same pretraining budget and the same evaluations
(kNN, cached linear probe of the last block, short fine-tuning); the base variant (75%, pixels, depth 4) is
shared by the three ablations. With several ``--seeds`` every variant runs once per seed (initialisation,
masks, data order and fine-tuning all follow ``train.seed``) and the table gives the mean and each seed's value.

    python benchmarks/ablations.py --out runs/ablations --pretrain-epochs 2     # ~35 min on 2 cores
    python benchmarks/ablations.py --out runs/abl --seeds 0 1 --precision bf16  # two seeds, bf16
    python benchmarks/ablations.py --out /tmp/abl --smoke                       # minutes, to check the script

Writes <out>/results.json step by step (a re-run continues; with several seeds, <out>/seed<N>/results.json),
<out>/ablations.md (the table) and <out>/mask_ratio.png (accuracy against mask ratio).
"""

from __future__ import annotations

from pathlib import Path

from protocol import REPO, Protocol, arguments, train_overrides

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


def values(runs: list[dict], key: str) -> list[float]:
    """``key``'s value in each seed's results (the seeds that have it)."""
    return [r[key] for r in runs if key in r]


def cell(vals: list[float], digits: int = 2) -> str:
    """The mean, followed by each seed's value when there is more than one."""
    if not vals:
        return "–"
    mean = f"{sum(vals) / len(vals):.{digits}f}"
    return mean if len(vals) == 1 else f"{mean} ({' / '.join(f'{v:.{digits}f}' for v in vals)})"


def table(runs: list[dict]) -> str:
    rows = ["| variant | mask ratio | norm_pix | decoder depth | final loss | kNN | linear probe | fine-tuning |",
            "|---|---|---|---|---|---|---|---|"]
    for name, variant in VARIANTS.items():
        v = {**BASE, **variant}
        cells = [cell(values(runs, f"{name}_{m}")) for m in METRICS]
        rows.append(f"| {name} | {v['mask_ratio']:.2f} | {v['norm_pix_loss']} | {v['decoder_depth']} | "
                    f"{cell(values(runs, f'{name}_loss'), 3)} | " + " | ".join(cells) + " |")
    epoch = {r.get("reported_epoch", "best") for r in runs}
    return "\n".join(rows) + f"\n\nLinear probe and fine-tuning: top-1 at the {' / '.join(sorted(epoch))} epoch.\n"


def mask_ratio_plot(runs: list[dict], path: Path) -> None:
    """Mean accuracy against the mask ratio; with several seeds, a bar from the lowest to the highest seed."""
    names = ["mask25", "mask50", "base", "mask90"]
    ratios = [100 * {**BASE, **VARIANTS[n]}["mask_ratio"] for n in names]
    series = {m: [values(runs, f"{n}_{m}") or [float("nan")] for n in names] for m in METRICS}
    setting_curve(ratios, series, path, "mask ratio (%)",
                  title=f"Fashion-MNIST, equal pretraining budget ({len(runs)} seed{'s' * (len(runs) > 1)})")


def main() -> None:
    parser = arguments(__doc__, "runs/ablations", 2, 1)
    parser.add_argument("--pretrain-samples", type=int, default=0, help="training images for pretraining (0 = all)")
    parser.add_argument("--finetune-samples", type=int, default=10000, help="training images for fine-tuning")
    parser.add_argument("--eval-samples", type=int, nargs=2, default=[20000, 5000],
                        help="training and test images for kNN and the probe")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="train.seed of each repeat (all variants of one seed run before the next seed)")
    args = parser.parse_args()
    limit = ["data.max_samples=2000", "data.max_eval_samples=500"] if args.smoke else []
    pre_epochs = 1 if args.smoke else args.pretrain_epochs
    out = Path(args.out)
    runs = []
    for seed in args.seeds:
        # one seed keeps the single-run layout (results.json in --out), so earlier runs continue
        p = Protocol("fashion-mnist", args.data_root, out if len(args.seeds) == 1 else out / f"seed{seed}", MODEL,
                     REPO / "configs/pretrain/fashion_mnist.yaml", REPO / "configs/finetune/fashion_mnist.yaml",
                     limit=limit, workers=args.workers, train=[*train_overrides(args), f"train.seed={seed}"],
                     finetune_set=args.finetune_set,
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
        runs.append(p.results)
        (out / "ablations.md").write_text(table(runs))  # after every seed, so a stopped run still has its table
        mask_ratio_plot(runs, out / "mask_ratio.png")
    print(table(runs))


if __name__ == "__main__":
    main()
