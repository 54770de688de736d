"""CIFAR-10 protocol: pretrain a tiny ViT (patch 4, 32px) with MAE, then kNN, cached linear probes and
fine-tuning against the same ViT fine-tuned from scratch with the same budget, beside raw-pixel baselines.

    python benchmarks/cifar10.py --out runs/cifar10                       # hours on 2 CPU cores, minutes on a GPU
    python benchmarks/cifar10.py --out /tmp/c10 --smoke                   # minutes, to check the script

Writes <out>/results.json step by step (a re-run continues where a stopped one ended) and prints each number.
"""

from __future__ import annotations

import json
from pathlib import Path

from protocol import REPO, Protocol, arguments, train_overrides

MODEL = ["model.name=mae_vit_tiny_patch4_32"]
DEPTH = 12


def main() -> None:
    parser = arguments(__doc__, "runs/cifar10_protocol", 20, 10)
    parser.add_argument("--finetune-samples", type=int, default=0, help="training images for both fine-tunings (0 = all)")
    parser.add_argument("--eval-samples", type=int, nargs=2, default=[0, 0],
                        help="training and test images for kNN and the probes (0 = all)")
    parser.add_argument("overrides", nargs="*", help="extra key=value settings for pretraining")
    args = parser.parse_args()
    limit = ["data.max_samples=2000", "data.max_eval_samples=500"] if args.smoke else []
    pre_epochs, ft_epochs = (1, 1) if args.smoke else (args.pretrain_epochs, args.finetune_epochs)
    model = MODEL + (["model.depth=2", "model.decoder_depth=1"] if args.smoke else [])
    depth = 2 if args.smoke else DEPTH
    p = Protocol("cifar10", args.data_root, Path(args.out), model, REPO / "configs/pretrain/cifar10.yaml",
                 REPO / "configs/finetune/cifar10.yaml", limit=limit, workers=args.workers,
                 train=train_overrides(args), finetune_set=args.finetune_set,
                 eval_limit=[] if args.smoke else [f"data.max_samples={args.eval_samples[0]}",
                                                   f"data.max_eval_samples={args.eval_samples[1]}"])
    ckpt = p.pretrain("pretrain", pre_epochs, args.overrides)
    ft_limit = [f"data.max_samples={args.finetune_samples}"] if args.finetune_samples and not args.smoke else []
    p.encoder_suite(ckpt, depth // 2, ft_epochs, (32, 32), 3, 10, args.smoke, ft_limit)
    print(json.dumps(p.results, indent=2))


if __name__ == "__main__":
    main()
