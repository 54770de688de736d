"""Fashion-MNIST protocol: pretrain a small ViT with MAE, then kNN, cached linear probes and fine-tuning,
beside raw-pixel baselines, the same encoder at random init and the same ViT fine-tuned from scratch.

    python benchmarks/fashion_mnist.py --out runs/fmnist                 # the full protocol (~2 h on 2 cores)
    python benchmarks/fashion_mnist.py --out /tmp/fm --smoke             # minutes, to check the script
    python benchmarks/fashion_mnist.py --out runs/fm4 --patch 4          # 4-px patches: 49 tokens, ~3x the compute

Writes <out>/results.json step by step (a re-run continues where a stopped one ended) and prints each number.
"""

from __future__ import annotations

import json
from pathlib import Path

from protocol import REPO, Protocol, arguments, train_overrides

PATCHES = (7, 4)  # 16 or 49 patches of a 28px image


def model(patch: int) -> list[str]:
    return [f"model.name=mae_vit_tiny_patch{patch}_28_gray", "model.depth=6"]


def main() -> None:
    parser = arguments(__doc__, "runs/fashion_mnist_protocol", 30, 6)
    parser.add_argument("--patch", type=int, choices=PATCHES, default=7,
                        help="patch size of the ViT (pretraining, baselines and fine-tuning alike)")
    parser.add_argument("overrides", nargs="*", help="extra key=value settings for pretraining")
    args = parser.parse_args()
    limit = ["data.max_samples=3000", "data.max_eval_samples=1000"] if args.smoke else []
    pre_epochs, ft_epochs = (1, 1) if args.smoke else (args.pretrain_epochs, args.finetune_epochs)
    p = Protocol("fashion-mnist", args.data_root, Path(args.out), model(args.patch), REPO / "configs/pretrain/fashion_mnist.yaml",
                 REPO / "configs/finetune/fashion_mnist.yaml", limit=limit, workers=args.workers,
                 train=train_overrides(args), finetune_set=args.finetune_set)
    ckpt = p.pretrain("pretrain", pre_epochs, args.overrides)
    p.encoder_suite(ckpt, 6, ft_epochs, (28, 28), 1, 10, args.smoke)
    print(json.dumps(p.results, indent=2))


if __name__ == "__main__":
    main()
