"""How unlike a set of reference images (those the model was trained on, or others like them) each image is, from
two numbers ``openmae evaluate`` measures of every image: the MAE's loss of its removed patches (its own objective)
and a generic inpainter's squared error of the same pixels (the image's own difficulty). The logarithms of the two
are fitted by one Gaussian over the reference images (their units do not matter: the covariance takes them in); an
image's ``atypicality`` is its squared Mahalanobis distance from it (about 2 for images like the reference; an image
the model fills in worse, or better, than images of its difficulty, or one far harder or easier than them, lies far
off). The loss alone, or its ratio to the inpainter's, fails one way or the other on some data: a pixel-target
Fashion-MNIST MAE fills grey natural photos in well because they are smooth; a CIFAR-10 MAE fills garments on black
in better than a blur does, because their edges are the kind it learned (benchmarks/reconstruction_ood.py)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from openmae.config import ConfigError

FEATURES = ("loss", "inpainting_loss")  # the columns of `openmae evaluate --predictions` it is fitted on
MIN_REFERENCE = 10  # the fewest reference images a 2-D Gaussian is fitted on
TAIL = 95.0  # the reference's own percentile of atypicality an image counts as atypical above
LOG_FLOOR = 1.0e-12  # the least error a logarithm is taken of (a perfect fill)


def _logs(columns: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return np.log(np.maximum(np.stack(columns, 1).astype(np.float64), LOG_FLOOR))  # (N, 2)


@dataclass
class Reference:
    """A Gaussian over the reference images' (log loss, log inpainting loss): ``mean`` (2,), ``precision`` (2, 2)
    the inverse covariance, ``tail`` its own images' 95th percentile of atypicality, ``count`` how many it holds."""

    mean: np.ndarray
    precision: np.ndarray
    tail: float
    count: int

    @classmethod
    def fit(cls, loss: np.ndarray, inpainting_loss: np.ndarray) -> Reference:
        x = _logs((loss, inpainting_loss))
        if len(x) < MIN_REFERENCE:
            raise ConfigError(f"the reference holds {len(x)} images; at least {MIN_REFERENCE} are needed to fit it "
                              "(a few hundred images like the training ones are a good reference)")
        if not np.isfinite(x).all():
            raise ConfigError(f"{int((~np.isfinite(x).all(1)).sum())} of the reference's {len(x)} images have errors "
                              "that are not finite numbers: measure the reference again with a model that trained "
                              "without diverging")
        cov = np.cov(x.T)
        if not np.linalg.cond(cov) < 1e12:  # (NaN-safe)
            raise ConfigError("the reference images' errors do not vary (all alike): give images that differ, such "
                              "as a few hundred of the training images")
        ref = cls(x.mean(0), np.linalg.inv(cov), 0.0, len(x))
        ref.tail = float(np.percentile(ref.score(loss, inpainting_loss), TAIL))
        return ref

    @classmethod
    def from_csv(cls, path: str | Path) -> Reference:
        """Fitted on a CSV that `openmae evaluate --predictions` wrote of the reference images (the same checkpoint
        and mask ratio as the images it scores)."""
        if not Path(path).is_file():
            raise ConfigError(f"evaluate.reference={path}: no such file; write it first with `openmae evaluate "
                              "--checkpoint <the same file> --predictions <it>` on images like the training ones")
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        missing = [key for key in FEATURES if not rows or key not in rows[0]]
        if missing:
            raise ConfigError(f"evaluate.reference={path} has no column {', '.join(missing)} (columns: "
                              f"{', '.join(rows[0]) if rows else 'none'}): write it with `openmae evaluate "
                              "--predictions` of a pretrained MAE")
        try:
            values = [np.array([float(r[key]) for r in rows]) for key in FEATURES]
        except ValueError as err:
            raise ConfigError(f"evaluate.reference={path}: a value is not a number ({err})") from err
        return cls.fit(*values)

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers, for a checkpoint (read back by :meth:`from_dict`)."""
        return {"mean": self.mean.tolist(), "precision": self.precision.tolist(), "tail": self.tail,
                "count": self.count}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Reference:
        return cls(np.array(d["mean"], dtype=np.float64), np.array(d["precision"], dtype=np.float64),
                   float(d["tail"]), int(d["count"]))

    def score(self, loss: np.ndarray, inpainting_loss: np.ndarray) -> np.ndarray:
        """(N,) each image's squared Mahalanobis distance from the reference's Gaussian."""
        x = _logs((np.asarray(loss), np.asarray(inpainting_loss))) - self.mean
        return np.einsum("ni,ij,nj->n", x, self.precision, x)
