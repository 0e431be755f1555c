"""The dataset value every loader returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["Dataset"]


def index_mask(indices: Tensor, n: int) -> Tensor:
    """(n,) bool: True at ``indices`` (positions of records among ``n``), False elsewhere."""
    mask = torch.zeros(n, dtype=torch.bool)
    mask[indices] = True
    return mask


@dataclass
class Dataset:
    """A train/test split of float inputs and int64 labels, with the valid input bounds.

    Attributes:
        name: short name ('mnist5k', a file path, ...).
        x_train, y_train, x_test, y_test: tensors; inputs (N, *input_shape) float32, labels (N,) int64.
        bounds: (low, high) of valid input values.
        n_classes: number of classes.
        feature_names: for tabular data, one name per feature.
        meta: anything else worth recording (source, scaling).
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    bounds: tuple[float, float] = (0.0, 1.0)
    n_classes: int = 0
    feature_names: list[str] | None = None
    meta: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.n_classes:
            ys = [y for y in (self.y_train, self.y_test) if y.numel()]
            self.n_classes = int(max(int(y.max()) for y in ys)) + 1 if ys else 0

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_test.shape[1:]) if self.x_test.numel() else tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={tuple(self.x_train.shape)}, test={tuple(self.x_test.shape)}, "
            f"n_classes={self.n_classes}, bounds={self.bounds})"
        )


def stratified_split(y: Tensor, test_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """Indices (train, test) of a seeded stratified split with exactly ``test_size`` test samples."""
    g = torch.Generator().manual_seed(seed)
    classes = torch.unique(y)
    n = y.shape[0]
    test_idx = []
    for c in classes:
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        k = round(test_size * idx.numel() / n)
        test_idx.append(idx[:k])
    test = torch.cat(test_idx)
    # fix rounding so the test split has exactly test_size samples
    mask = index_mask(test, n)
    diff = test_size - int(mask.sum())
    if diff:
        pool = torch.nonzero(~mask if diff > 0 else mask).flatten()
        pick = pool[torch.randperm(pool.numel(), generator=g)[: abs(diff)]]
        mask[pick] = diff > 0
    test = torch.nonzero(mask).flatten()
    train = torch.nonzero(~mask).flatten()
    train = train[torch.randperm(train.numel(), generator=g)]
    return train, test[torch.randperm(test.numel(), generator=g)]
