"""Registered architectures: names that a safetensors weights file can be loaded into.

Each entry builds an ``nn.Module`` mapping inputs in [0, 1] to logits (the logistic-regression entries
``cancer-logreg`` and ``digits-logreg``: to probabilities, :class:`~bastion.models.linear.LogisticModel`); any
normalisation is a layer inside the module, so eps stays in input space. Users add their own with :func:`register_architecture`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..registry import Registry
from .linear import LogisticModel

__all__ = ["ARCHITECTURES", "Architecture", "build_architecture", "register_architecture"]


@dataclass(frozen=True)
class Architecture:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    n_classes: int
    bounds: tuple[float, float] = (0.0, 1.0)


ARCHITECTURES: Registry[Architecture] = Registry("architecture")
"""Network architectures by name (``"mnist-cnn"``, ...): what a weights file is loaded into."""


def register_architecture(
    name: str,
    build: Callable[[], nn.Module],
    *,
    input_shape: tuple[int, ...],
    n_classes: int,
    bounds: tuple[float, float] = (0.0, 1.0),
    replace: bool = False,
) -> None:
    """Make ``name`` loadable from a safetensors file (``--model weights.safetensors --arch name``); a taken
    name is refused unless ``replace=True``."""
    key = Registry.canonical(name)
    ARCHITECTURES.register(key, Architecture(key, build, tuple(input_shape), int(n_classes), bounds), replace=replace)


def build_architecture(name: str) -> tuple[nn.Module, Architecture]:
    """A freshly initialised module of the architecture ``name`` and its record."""
    arch = ARCHITECTURES.get(name)
    return arch.build(), arch


def _digits_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))


def _mnist_cnn() -> nn.Module:
    # channels-last weights: oneDNN runs this CNN 2-3x faster forward (~1.4x forward+backward) on a CPU,
    # whatever the input layout; the values, and so the function, are the same.
    return nn.Sequential(
        nn.Conv2d(1, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 32x13x13
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 64x5x5
        nn.Flatten(),
        nn.Linear(64 * 5 * 5, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    ).to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch accepts it; its stubs do not


def _cancer_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 2))


register_architecture("digits-mlp", _digits_mlp, input_shape=(1, 8, 8), n_classes=10)
register_architecture("mnist-cnn", _mnist_cnn, input_shape=(1, 28, 28), n_classes=10)
register_architecture("cancer-mlp", _cancer_mlp, input_shape=(30,), n_classes=2)
register_architecture("cancer-logreg", lambda: LogisticModel((30,), 2), input_shape=(30,), n_classes=2)
register_architecture("digits-logreg", lambda: LogisticModel((1, 8, 8), 10), input_shape=(1, 8, 8), n_classes=10)
