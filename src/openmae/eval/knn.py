"""Weighted k-nearest-neighbour classification on L2-normalised features (Wu et al. 2018, as DINO uses)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F

from openmae.eval.confusion import class_scores, confusion_matrix
from openmae.eval.device_room import device_with_room
from openmae.eval.multilabel import multilabel_scores

log = logging.getLogger("openmae.knn")

# the most one chunk's (m, N) similarity matrix takes (fp32): against ImageNet's 1.28 M training features a chunk of
# 1,024 test features would take 5.2 GB, on a GPU beside a training run's activations
SIMILARITY_BYTES = 1 << 30


def chunk_rows(chunk: int, train_count: int) -> int:
    """Test features a chunk: at most ``chunk``, and few enough that their similarities fit SIMILARITY_BYTES."""
    return max(1, min(chunk, SIMILARITY_BYTES // (4 * max(train_count, 1))))


def search_device(train_feats: torch.Tensor, device: torch.device | str | None) -> torch.device:
    """Where the neighbour search runs: ``device`` (a GPU does ImageNet's ~100 TFLOP of similarities in well under a
    second, a CPU in minutes) when the training features and one chunk's similarities fit there, else the CPU."""
    if device is None:
        return train_feats.device
    # the fp32 features, their normalised copy and one chunk's similarities
    need = 2 * train_feats.shape[0] * max(train_feats.shape[1], 1) * 4 + SIMILARITY_BYTES
    return device_with_room(need, device, "the kNN search", f"its {train_feats.shape[0]} training features and one "
                            "chunk's similarities", log)


@torch.no_grad()
def _neighbours(train_feats: torch.Tensor, test_feats: torch.Tensor, k: int, chunk: int):
    """Per chunk of test features: cosine similarities (m, k) and indices (m, k) of the ``k`` nearest training
    features, on the training features' device (chunked so that the (m, N) similarity matrix stays small)."""
    train = F.normalize(train_feats.float(), dim=1)
    rows = chunk_rows(chunk, len(train))
    for start in range(0, test_feats.shape[0], rows):
        test = F.normalize(test_feats[start : start + rows].to(train.device).float(), dim=1)
        yield (test @ train.T).topk(k, dim=1)  # (m, N) -> (m, k) twice


def _votes(top_sim: torch.Tensor, top_labels: torch.Tensor, num_classes: int, temperature: float) -> torch.Tensor:
    """(m, C) votes of neighbours of labels (m, k), or of rows (m, k, C) of several classes each (each class
    gets the weight of every neighbour of it)."""
    weights = (top_sim / temperature).exp()  # (m, k)
    rows = top_labels.float() if top_labels.ndim == 3 else F.one_hot(top_labels, num_classes).float()  # (m, k, C)
    return (rows * weights.unsqueeze(-1)).sum(dim=1)  # (m, C)


def _check(k: int, temperature: float) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


Gather = Callable[[torch.Tensor], torch.Tensor]  # every process's tensor of one shape, stacked (W, ...) in rank order


def _nearest_of_all(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor, k: int,
                    chunk: int, gather: Gather | None):
    """Per chunk of test features: similarities (m, k) and labels (m, k) of the ``k`` nearest training features. With
    ``gather``, the training features are split between processes (each holds its part, every one all the test
    features): each process's ``k`` nearest are gathered and the ``k`` nearest of those kept, which are the ``k``
    nearest of all (the processes' similarity matrices and memory are 1 / W of one process's)."""
    train_labels = train_labels.to(train_feats.device)
    if gather is None:
        k = min(k, train_feats.shape[0])
        for sim, idx in _neighbours(train_feats, test_feats, k, chunk):
            yield sim, train_labels[idx]
        return
    k = min(k, int(gather(torch.tensor([train_feats.shape[0]])).sum()))
    mine = min(k, train_feats.shape[0])
    for sim, idx in _neighbours(train_feats, test_feats, mine, chunk):
        labels = train_labels[idx]  # (m, mine), or (m, mine, C) of several classes each
        if mine < k:  # a part with fewer than k features: the missing neighbours never win (exp(-inf) = 0)
            sim = F.pad(sim, (0, k - mine), value=float("-inf"))
            labels = F.pad(labels, (0, 0) * (labels.ndim - 2) + (0, k - mine))
        sims, labels = gather(sim), gather(labels)  # (W, m, k) twice (labels (W, m, k, C))
        sims, labels = sims.transpose(0, 1).flatten(1), labels.transpose(0, 1).flatten(1, 2)  # (m, W * k)
        sim, pick = sims.topk(k, dim=1)
        yield sim, labels.gather(1, pick.view(*pick.shape, *(1,) * (labels.ndim - 2)).expand(-1, -1, *labels.shape[2:]))


@torch.no_grad()
def knn_predict(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor, num_classes: int,
                k: int = 20, temperature: float = 0.07, chunk: int = 1024, gather: Gather | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """Class scores (M, num_classes) on the CPU: each of the ``k`` most cosine-similar training samples votes for its
    class with weight ``exp(similarity / temperature)``. ``gather``: the training features are this process's part
    of them (see ``_nearest_of_all``). ``device``: where to search (``search_device``; default: where the features
    are)."""
    _check(k, temperature)
    train_feats = train_feats.to(search_device(train_feats, device))
    return torch.cat([_votes(sim, labels, num_classes, temperature)
                      for sim, labels in _nearest_of_all(train_feats, train_labels, test_feats, k, chunk, gather)]).cpu()


@torch.no_grad()
def knn_accuracy_grid(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                      test_labels: torch.Tensor, num_classes: int, ks: tuple[int, ...],
                      temperatures: tuple[float, ...], chunk: int = 1024, device: torch.device | str | None = None
                      ) -> dict[tuple[int, float], float]:
    """Top-1 accuracy (percent) for every (k, temperature), from one neighbour search for the largest k
    (the nearest k of the largest-k search are the k nearest); ``device``: as ``knn_predict``'s."""
    for k in ks:
        for t in temperatures:
            _check(k, t)
    train_feats = train_feats.to(search_device(train_feats, device))
    test_labels = test_labels.to(train_feats.device)
    correct = {(k, t): torch.zeros((), dtype=torch.long, device=train_feats.device) for k in ks for t in temperatures}
    start = 0
    for sim, labels in _nearest_of_all(train_feats, train_labels, test_feats, max(ks), chunk, None):
        truth = test_labels[start : start + len(sim)]
        for k, t in correct:  # counted on the search's device: one host sync at the end, not one a setting and chunk
            correct[k, t] += (_votes(sim[:, :k], labels[:, :k], num_classes, t).argmax(1) == truth).sum()
        start += len(sim)
    return {key: 100.0 * int(c) / len(test_feats) for key, c in correct.items()}


def standardize(train_feats: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Every feature dimension shifted and scaled by the training features' mean and std (then the cosine
    similarity weighs all dimensions alike instead of being ruled by a few large ones)."""
    mean, std = train_feats.mean(dim=0), train_feats.std(dim=0).clamp_min(1e-6)
    return [(f - mean) / std for f in (train_feats, *others)]


def knn_accuracy(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, num_classes: int, k: int = 20, temperature: float = 0.07,
                 gather: Gather | None = None, device: torch.device | str | None = None) -> dict[str, float]:
    """Top-1 (and top-5 when there are more than 5 classes) accuracy, balanced accuracy and macro F1
    (:mod:`openmae.eval.confusion`), in percent (``gather``, ``device``: see ``knn_predict``). Labels (N, C) of
    several classes an image (``data.multi_label``): each class's share of the ``k`` neighbours' weight is its
    probability, measured by :func:`openmae.eval.multilabel.multilabel_scores` (``knn_mean_ap`` ...); a nan label
    is unknown (``data.uncertain_label=ignore``): a class's share is of the weight of the neighbours whose label of
    it is known, or the class's share of the known training labels where none of the ``k`` is."""
    if test_labels.ndim == 2:  # several classes an image: each class's share of the neighbours' weight
        known = ~train_labels.isnan()  # (N, C)
        # C more classes: the known labels' weights, the denominators of the shares (one search for both)
        every = torch.cat([train_labels.nan_to_num(0.0), known.to(train_labels.dtype)], 1)  # (N, 2C)
        scores = knn_predict(train_feats, every, test_feats, 2 * num_classes, k, temperature, gather=gather,
                             device=device)  # (M, 2C)
        share = scores[:, :num_classes] / scores[:, num_classes:]  # (M, C); nan: none of the k known
        counts = every.double().sum(0)  # (2C,): each class's positives and known labels (this rank's part's)
        counts = gather(counts).sum(0) if gather is not None else counts  # all the training labels'
        prior = (counts[:num_classes] / counts[num_classes:].clamp_min(1)).to(share)  # (C,)
        share = torch.where(share.isnan(), prior.expand_as(share), share).numpy()
        return {f"knn_{key}": value for key, value in multilabel_scores(share, test_labels.cpu().numpy()).items()}
    scores = knn_predict(train_feats, train_labels, test_feats, num_classes, k, temperature, gather=gather,
                         device=device)
    test_labels = test_labels.cpu()
    predicted = scores.argmax(1).cpu()
    # from the counts, as the grid's: a float32 mean printed 27.399998903274536 for 137 of 500
    out = {"knn_top1": 100.0 * int((predicted == test_labels).sum()) / len(test_labels)}
    balance = class_scores(confusion_matrix(test_labels, predicted, num_classes).numpy())
    out.update(knn_balanced_accuracy=balance["balanced_accuracy"], knn_macro_f1=balance["macro_f1"])
    if num_classes > 5:
        top5 = scores.topk(5, dim=1).indices
        out["knn_top5"] = 100.0 * int((top5 == test_labels[:, None]).any(1).sum()) / len(test_labels)
    return out
