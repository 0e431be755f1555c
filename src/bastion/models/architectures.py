"""Registered architectures: names that a safetensors weights file can be loaded into.

Each entry builds an ``nn.Module`` mapping inputs in [0, 1] to logits (the logistic-regression entries
``cancer-logreg`` and ``digits-logreg``: to probabilities, :class:`~bastion.models.linear.LogisticModel`); any
normalisation is a layer inside the module, so eps stays in input space. Users add their own with :func:`register_architecture`.

HE-friendly entries (affine layers and :class:`~bastion.models.he.PolyAct` only, so that
:mod:`bastion.defenses.encrypted` can evaluate them on CKKS ciphertexts): ``digits-he-mlp`` and ``mnist-he-cnn``,
the network of TenSEAL's MNIST tutorial ("Encrypted Convolution on MNIST": one 7x7 convolution of stride 3 to 4
channels, 256 -> 64 -> 10) with ``PolyAct`` where the tutorial squares (bastion's one polynomial activation, a
quadratic stand-in for ReLU; compiled, it costs the same single squaring as ``x^2``). Any other architecture
``NAME`` has an HE-friendly variant ``NAME-he`` (:func:`~bastion.models.he.he_friendly` of it: ReLU-like ->
``PolyAct``, max -> average pooling), registered the first time the name is looked up, so a file saved under
``mnist-cnn-he`` loads in a new process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..registry import Registry
from .he import PolyAct, he_friendly, he_rewrites
from .linear import LogisticModel

__all__ = [
    "ARCHITECTURES",
    "HE_SUFFIX",
    "Architecture",
    "build_architecture",
    "he_variant",
    "register_architecture",
]

HE_SUFFIX = "-he"
"""``NAME-he`` is :func:`~bastion.models.he.he_friendly` of the registered architecture ``NAME``."""


@dataclass(frozen=True)
class Architecture:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    n_classes: int
    bounds: tuple[float, float] = (0.0, 1.0)


class _Architectures(Registry[Architecture]):
    """The architecture registry; a missing ``NAME-he`` whose ``NAME`` is registered is derived on lookup."""

    def get(self, name: str) -> Architecture:  # type: ignore[override] # as Registry.get: a missing name is an error
        self._derive(name)
        return super().get(name)

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str):
            self._derive(name)
        return super().__contains__(name)

    def _derive(self, name: str) -> None:
        key = self.canonical(name)
        base = key.removesuffix(HE_SUFFIX)
        if key in self._items or base == key or base not in self._items:
            return
        spec = self._items[base]
        self.register(
            key, Architecture(key, lambda: he_friendly(spec.build()), spec.input_shape, spec.n_classes, spec.bounds)
        )


ARCHITECTURES: Registry[Architecture] = _Architectures("architecture")
"""Network architectures by name (``"mnist-cnn"``, ...): what a weights file is loaded into. ``NAME-he`` resolves
to the HE-friendly variant of ``NAME`` (see the module docstring)."""


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


def he_variant(name: str) -> str:
    """The HE-friendly architecture to train for ``name``: ``name`` itself when it has no ReLU-like activation or
    max pooling to rewrite (``mnist-he-cnn``, ``digits-logreg``), else ``name-he`` (registered by this lookup)."""
    spec = ARCHITECTURES.get(name)
    with torch.random.fork_rng(devices=[]):  # building initialises weights: leave the caller's RNG alone
        module = spec.build()
    if not he_rewrites(module):
        return spec.name
    return ARCHITECTURES.get(spec.name + HE_SUFFIX).name


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


def _digits_he_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), PolyAct(), nn.Linear(32, 10))


def _mnist_he_cnn() -> nn.Module:
    # TenSEAL's tutorial network; its x^2 activations are PolyAct here (one squaring each once compiled)
    return nn.Sequential(
        nn.Conv2d(1, 4, kernel_size=7, stride=3),  # 4x8x8
        PolyAct(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 64),
        PolyAct(),
        nn.Linear(64, 10),
    )


def _cancer_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 2))


register_architecture("digits-mlp", _digits_mlp, input_shape=(1, 8, 8), n_classes=10)
register_architecture("mnist-cnn", _mnist_cnn, input_shape=(1, 28, 28), n_classes=10)
register_architecture("cancer-mlp", _cancer_mlp, input_shape=(30,), n_classes=2)
register_architecture("cancer-logreg", lambda: LogisticModel((30,), 2), input_shape=(30,), n_classes=2)
register_architecture("digits-logreg", lambda: LogisticModel((1, 8, 8), 10), input_shape=(1, 8, 8), n_classes=10)
register_architecture("digits-he-mlp", _digits_he_mlp, input_shape=(1, 8, 8), n_classes=10)
register_architecture("mnist-he-cnn", _mnist_he_cnn, input_shape=(1, 28, 28), n_classes=10)
