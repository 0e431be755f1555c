"""Deterministic supervised training for the zoo and ``bastion train``.

Determinism without touching the caller's random state: initialisation runs inside
``torch.random.fork_rng`` with a fixed seed, and batches are shuffled by an explicit generator.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.dataset import Dataset
from ..errors import UsageError
from .architectures import build_architecture

__all__ = ["TRAIN_CONFIGS", "TrainConfig", "accuracy", "train_architecture", "train_module"]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0


TRAIN_CONFIGS: dict[str, TrainConfig] = {
    "digits-mlp": TrainConfig(epochs=40, batch_size=32, lr=2e-3),
    "mnist-cnn": TrainConfig(epochs=12, batch_size=64, lr=1e-3),
    "cancer-mlp": TrainConfig(epochs=60, batch_size=32, lr=2e-3, weight_decay=1e-4),
}


@torch.no_grad()
def accuracy(module: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    was = module.training
    module.eval()
    correct = sum(
        int((module(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
        for i in range(0, x.shape[0], batch_size)
    )
    module.train(was)
    return correct / max(1, x.shape[0])


def train_module(
    module: nn.Module,
    x: Tensor,
    y: Tensor,
    config: TrainConfig,
    on_epoch: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """Train ``module`` with Adam and cross-entropy, shuffling with a seeded generator."""
    g = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.Adam(module.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    module.train()
    n = x.shape[0]
    for epoch in range(config.epochs):
        perm = torch.randperm(n, generator=g)
        total = 0.0
        for i in range(0, n, config.batch_size):
            idx = perm[i : i + config.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(module(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
        if on_epoch is not None:
            on_epoch(epoch, total / n)
    module.eval()
    return module


def train_architecture(
    arch_name: str,
    data: Dataset,
    config: TrainConfig | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> tuple[nn.Module, dict[str, object]]:
    """Build ``arch_name`` with seeded initialisation, train it on ``data``; return it and a record."""
    config = config or TRAIN_CONFIGS.get(arch_name, TrainConfig())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        module, arch = build_architecture(arch_name)
    if tuple(data.input_shape) != arch.input_shape:
        raise UsageError(
            f"architecture {arch_name!r} takes inputs of shape {arch.input_shape}, but dataset {data.name!r} has {data.input_shape}"
        )
    if data.n_classes > arch.n_classes:
        raise UsageError(
            f"architecture {arch_name!r} has {arch.n_classes} classes, dataset {data.name!r} has {data.n_classes}"
        )
    start = time.perf_counter()
    train_module(module, data.x_train, data.y_train, config, on_epoch)
    record = {
        "arch": arch_name,
        "data": data.name,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "seed": config.seed,
        "seconds": round(time.perf_counter() - start, 2),
        "test_accuracy": accuracy(module, data.x_test, data.y_test),
    }
    return module, record
