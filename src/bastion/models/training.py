"""Deterministic supervised training for the zoo and ``bastion train``, on the one trainer
(:class:`bastion.training.Trainer`, clean steps).

Determinism without touching the caller's random state: initialisation runs inside
``torch.random.fork_rng`` with a fixed seed, and batches are shuffled by an explicit generator.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..data.dataset import Dataset
from ..errors import UsageError
from ..training import Trainer, accuracy
from .architectures import HE_SUFFIX, build_architecture
from .he import he_friendly, he_rewrites

if TYPE_CHECKING:
    from .torch import TorchClassifier

__all__ = [
    "TRAIN_CONFIGS",
    "TrainConfig",
    "accuracy",
    "frozen_classifier",
    "he_finetune",
    "recipe",
    "train_architecture",
    "train_module",
    "train_recipe",
]


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
    # polynomial activations grow like x^2: Adam at 1e-3 as TenSEAL's MNIST tutorial trains its network (96 % on
    # digits in ~1 s; 95.6 % on mnist5k in ~4 s on 2 CPU cores, measured)
    "digits-he-mlp": TrainConfig(epochs=40, batch_size=32, lr=1e-3),
    "mnist-he-cnn": TrainConfig(epochs=30, batch_size=32, lr=1e-3),
}


def recipe(arch: str) -> TrainConfig:
    """The training recipe of ``arch``: its own entry in :data:`TRAIN_CONFIGS`, else (for an HE-friendly variant
    ``NAME-he``) the recipe of ``NAME``, else the defaults."""
    key = arch.strip().lower()
    return TRAIN_CONFIGS.get(key) or TRAIN_CONFIGS.get(key.removesuffix(HE_SUFFIX)) or TrainConfig()


def train_module(
    module: nn.Module,
    x: Tensor,
    y: Tensor,
    config: TrainConfig,
    on_epoch: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """Train ``module`` in place with Adam and cross-entropy on :class:`bastion.training.Trainer`, shuffling with a
    generator seeded with ``config.seed``; return it in eval mode. ``on_epoch(epoch, mean_loss)`` after each epoch."""
    _fit(module, x, y, config, on_epoch)
    return module


def _fit(
    module: nn.Module,
    x: Tensor,
    y: Tensor,
    config: TrainConfig,
    on_epoch: Callable[[int, float], None] | None = None,
) -> dict[str, object]:
    """:func:`train_module`, returning the trainer's record (per-epoch loss, learning rate and seconds)."""
    return Trainer(
        module,
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        weight_decay=config.weight_decay,
        seed=config.seed,
        settings=dataclasses.asdict(config),
        on_epoch=None if on_epoch is None else (lambda entry: on_epoch(entry["epoch"] - 1, entry["loss"])),
    ).fit(x, y)


def train_architecture(
    arch_name: str,
    data: Dataset,
    config: TrainConfig | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> tuple[nn.Module, dict[str, object]]:
    """Build ``arch_name`` with seeded initialisation, train it on ``data``; return it and a record."""
    config = config or recipe(arch_name)
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
    history = _fit(module, data.x_train, data.y_train, config, on_epoch)
    record = {
        "arch": arch_name,
        "data": data.name,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "seed": config.seed,
        "seconds": round(time.perf_counter() - start, 2),
        "test_accuracy": accuracy(module, data.x_test, data.y_test),
        "history": history["epochs"],
    }
    return module, record


def frozen_classifier(module: nn.Module, arch: str) -> TorchClassifier:
    """``module`` (an instance of the registered architecture ``arch``) in eval mode with its parameters frozen,
    wrapped with the architecture's bounds, classes and input shape; ``.arch`` names the architecture."""
    from .torch import TorchClassifier

    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    spec = build_architecture(arch)[1]
    clf = TorchClassifier(module, bounds=spec.bounds, n_classes=spec.n_classes, input_shape=spec.input_shape)
    clf.arch = arch
    return clf


def train_recipe(
    data: Dataset, arch: str, *, epochs: int | None = None, seed: int = 0, log: Callable[[str], None] | None = None
) -> tuple[TorchClassifier, dict[str, object]]:
    """Train the registered architecture ``arch`` on ``data``'s training split with its zoo recipe (``epochs`` and
    ``seed`` overridden when given); returns a frozen classifier and the training record."""
    config = dataclasses.replace(recipe(arch), seed=seed, **({"epochs": epochs} if epochs else {}))
    on_epoch = None if log is None else (lambda e, loss: log(f"  epoch {e + 1}/{config.epochs}  loss {loss:.4f}"))
    module, record = train_architecture(arch, data, config, on_epoch=on_epoch)
    return frozen_classifier(module, arch), record


def he_finetune(
    module: nn.Module,
    arch: str,
    data: Dataset,
    *,
    epochs: int = 5,
    lr: float | None = None,
    seed: int = 0,
    on_epoch: Callable[[int, float], None] | None = None,
) -> tuple[nn.Module, dict[str, object]]:
    """Convert a trained ``module`` of the registered architecture ``arch`` for encrypted inference: its
    :func:`~bastion.models.he.he_friendly` copy (polynomial activations, average pooling; the weights kept), then
    ``epochs`` of fine-tuning on ``data``'s training split with the recipe of ``arch-he`` (``lr`` overrides its
    learning rate). ``module`` is left as it was.

    Returns the fine-tuned copy (eval mode) and a record: its architecture name (``arch-he``, or ``arch`` when there
    was nothing to rewrite), what was replaced, and the test accuracy of the original, of the copy right after the
    swap and after fine-tuning (``accuracy_change``: after minus original).
    """
    if epochs < 1:
        raise UsageError(f"epochs must be >= 1 (fine-tuning after the swap), got {epochs}")
    replaced = he_rewrites(module)
    name = arch if not replaced else arch.strip().lower() + HE_SUFFIX
    spec = build_architecture(name)[1]
    if tuple(data.input_shape) != spec.input_shape:
        raise UsageError(f"architecture {arch!r} takes inputs of shape {spec.input_shape}, data has {data.input_shape}")
    x, y = data.x_test, data.y_test
    before = accuracy(module, x, y)
    copy = he_friendly(module)
    for p in copy.parameters():
        p.requires_grad_(True)
    swapped = accuracy(copy, x, y)
    base = recipe(name)
    config = dataclasses.replace(base, epochs=epochs, seed=seed, lr=base.lr if lr is None else lr)
    history = _fit(copy, data.x_train, data.y_train, config, on_epoch)
    after = accuracy(copy, x, y)
    record: dict[str, object] = {
        "arch": name,
        "from_arch": arch,
        "data": data.name,
        "replaced": replaced,
        "epochs": epochs,
        "lr": config.lr,
        "seed": seed,
        "accuracy_before": before,
        "accuracy_swapped": swapped,
        "accuracy_after": after,
        "accuracy_change": after - before,
        "seconds": history["seconds"],
        "history": history["epochs"],
    }
    return copy, record
