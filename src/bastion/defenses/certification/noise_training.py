"""Gaussian-noise training for randomized smoothing (Cohen, Rosenfeld & Kolter 2019, section 4 and
appendix B; Gaussian data augmentation as in Lecuyer et al. 2019).

The smoothed classifier g(x) = argmax_c P[f(x + delta) = c] certifies large radii only if the base
classifier f is accurate *under* the noise delta ~ N(0, sigma^2 I). :func:`train_with_noise` trains f
with cross-entropy on x + delta, fresh noise for every batch, at the same sigma that will be used
for certification. It also fine-tunes an existing model (a few epochs usually suffice).

No certificate depends on how f was trained: training only changes how large the certified radii are.
:func:`gaussian_harden` is the whole defence on a classifier and a dataset (train a copy, measure its test
accuracy clean and under the noise), as ``bastion harden --defense gaussian`` runs it.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ...data.dataset import Dataset
from ...errors import UsageError
from ...models.torch import TorchClassifier
from ...training import GaussianNoise, Trainer, accuracy

__all__ = ["accuracy_under_noise", "gaussian_harden", "train_with_noise"]


def train_with_noise(
    module: nn.Module,
    x: Tensor,
    y: Tensor,
    sigma: float,
    *,
    epochs: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    on_epoch: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """Train ``module`` in place on inputs with Gaussian noise N(0, sigma^2 I); return it in eval mode.

    Adam on cross-entropy; every parameter is trained (frozen ones too, as loaded and zoo models come
    frozen) and each parameter's ``requires_grad`` flag is restored afterwards.

    Args:
        module: a network mapping (N, *input_shape) to (N, n_classes) logits, on ``x``'s device.
        x: training inputs (N, *input_shape), in the model's input range (noisy copies are not clipped,
            as in Cohen et al.). y: labels (N,) int64.
        sigma: noise standard deviation, in input units: the sigma the smoothed classifier will use.
        epochs: passes over the data. batch_size: inputs per step. lr: Adam's learning rate.
        seed: seed of the one ``torch.Generator`` that shuffles the batches and draws the noise (the
            global RNG is neither used for them nor seeded; layers such as dropout still use it).
        on_epoch: ``on_epoch(epoch, mean_loss)`` after each epoch.
    """
    if not isinstance(module, nn.Module):
        raise UsageError(f"train_with_noise trains a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise UsageError("x must be a floating-point tensor of shape (N, *input_shape)")
    if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0] or y.is_floating_point():
        raise UsageError(f"y must be integer labels of shape ({x.shape[0]},), one per input")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise UsageError(
            f"sigma must be a finite number > 0 (the smoothing noise level, e.g. 0.25), got {sigma!r}; "
            "for training without noise use bastion.models.training.train_module"
        )
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{name} must be an integer >= 1, got {value!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise UsageError(f"lr must be a finite number > 0, got {lr!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UsageError(f"seed must be an integer, got {seed!r}")
    if x.shape[0] == 0:
        raise UsageError("x holds no training inputs")
    params = list(module.parameters())
    if not params:
        raise UsageError("the module has no parameters to train")
    flags = [p.requires_grad for p in params]
    for p in params:  # loaded and zoo models come frozen: train every parameter, restore the flags after
        p.requires_grad_(True)
    try:
        Trainer(
            module,
            epochs=epochs,
            batch_size=batch_size,
            step=GaussianNoise(sigma=float(sigma)),
            lr=float(lr),
            generator=torch.Generator(device=x.device).manual_seed(seed),
            settings={"step": "gaussian", "sigma": float(sigma), "epochs": epochs, "batch_size": batch_size, "lr": lr},
            on_epoch=None if on_epoch is None else (lambda entry: on_epoch(entry["epoch"] - 1, entry["loss"])),
        ).fit(x, y.to(x.device))
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    module.eval()
    return module


@torch.no_grad()
def accuracy_under_noise(module: nn.Module, x: Tensor, y: Tensor, sigma: float, *, seed: int = 0) -> float:
    """Accuracy of ``module`` on one noisy copy of each input, ``x + N(0, sigma^2 I)`` (noise from a generator
    seeded with ``seed``, on ``x``'s device): how well the base classifier does under the smoothing noise."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    noisy = x + sigma * torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
    return accuracy(module, noisy, y)


def gaussian_harden(
    model: TorchClassifier,
    data: Dataset,
    sigma: float,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    on_epoch: Callable[[int, float], None] | None = None,
) -> tuple[TorchClassifier, dict[str, Any]]:
    """Gaussian-noise training of a copy of ``model`` on ``data``'s training split (:func:`train_with_noise`),
    then its test accuracy clean and under the noise; return the trained copy and the record.

    The given model is not modified. The record (what ``bastion harden --defense gaussian`` writes): ``config``
    (defense, sigma, epochs, batch_size, lr, seed), ``epochs`` (loss per epoch), ``seconds``, ``test_accuracy``
    and ``test_accuracy_under_noise`` (one noisy copy of each test input, noise seeded with ``seed``). Save it
    with :func:`bastion.training.save_trained`; smooth it with ``SmoothedClassifier(model, sigma)``.
    """
    if not isinstance(model, TorchClassifier):
        raise UsageError(f"noise training needs a torch model (TorchClassifier), got {type(model).__name__}")
    module = copy.deepcopy(model.module)
    device = next(module.parameters()).device
    start = time.perf_counter()
    epochs_done: list[dict[str, Any]] = []

    def record_epoch(epoch: int, loss: float) -> None:
        epochs_done.append({"epoch": epoch + 1, "loss": loss})
        if on_epoch is not None:
            on_epoch(epoch, loss)

    x, y = data.x_train.to(device), data.y_train.to(device)
    train_with_noise(module, x, y, sigma, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, on_epoch=record_epoch)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    record: dict[str, Any] = {
        "config": {
            "defense": "gaussian",
            "sigma": sigma,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
        },
        "epochs": epochs_done,
        "seconds": round(time.perf_counter() - start, 3),
        "test_accuracy": accuracy(module, x_test, y_test),
        "test_accuracy_under_noise": accuracy_under_noise(module, x_test, y_test, sigma, seed=seed),
    }
    return model.with_module(module), record
