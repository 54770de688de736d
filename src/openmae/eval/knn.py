"""Weighted k-nearest-neighbour classification on L2-normalised features (Wu et al. 2018, as DINO uses)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor, num_classes: int,
                k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """Class scores (M, num_classes): each of the ``k`` most cosine-similar training samples votes for its
    class with weight ``exp(similarity / temperature)``."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    k = min(k, train_feats.shape[0])
    train = F.normalize(train_feats.float(), dim=1)
    scores = []
    for start in range(0, test_feats.shape[0], chunk):
        test = F.normalize(test_feats[start : start + chunk].float(), dim=1)
        sim = test @ train.T  # (m, N)
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()  # (m, k)
        votes = F.one_hot(train_labels[top_idx], num_classes).float()  # (m, k, C)
        scores.append((votes * weights.unsqueeze(-1)).sum(dim=1))
    return torch.cat(scores)


def knn_accuracy(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, num_classes: int, k: int = 20, temperature: float = 0.07) -> dict[str, float]:
    """Top-1 (and top-5 when there are more than 5 classes) accuracy in percent."""
    scores = knn_predict(train_feats, train_labels, test_feats, num_classes, k, temperature)
    out = {"knn_top1": 100.0 * (scores.argmax(1) == test_labels).float().mean().item()}
    if num_classes > 5:
        top5 = scores.topk(5, dim=1).indices
        out["knn_top5"] = 100.0 * (top5 == test_labels[:, None]).any(1).float().mean().item()
    return out
