"""Gaussian-noise training for randomized smoothing (Cohen, Rosenfeld & Kolter 2019, section 4 and
appendix B; Gaussian data augmentation as in Lecuyer et al. 2019).

The smoothed classifier g(x) = argmax_c P[f(x + delta) = c] certifies large radii only if the base
classifier f is accurate *under* the noise delta ~ N(0, sigma^2 I). :func:`train_with_noise` trains f
with cross-entropy on x + delta, fresh noise for every batch, at the same sigma that will be used
for certification. It also fine-tunes an existing model (a few epochs usually suffice).

No certificate depends on how f was trained: training only changes how large the certified radii are.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import UsageError

__all__ = ["train_with_noise"]


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
    g = torch.Generator(device=x.device).manual_seed(seed)
    y = y.to(x.device)
    for p in params:  # loaded and zoo models come frozen: train every parameter, restore the flags after
        p.requires_grad_(True)
    try:
        _fit(module, params, x, y, float(sigma), epochs, batch_size, float(lr), g, on_epoch)
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    module.eval()
    return module


def _fit(
    module: nn.Module,
    params: list[nn.Parameter],
    x: Tensor,
    y: Tensor,
    sigma: float,
    epochs: int,
    batch_size: int,
    lr: float,
    g: torch.Generator,
    on_epoch: Callable[[int, float], None] | None,
) -> None:
    opt = torch.optim.Adam(params, lr=lr)
    module.train()
    n = x.shape[0]
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=g, device=x.device)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            xb = x[idx]
            noisy = xb + sigma * torch.randn(xb.shape, generator=g, device=xb.device, dtype=xb.dtype)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(module(noisy), y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
        if on_epoch is not None:
            on_epoch(epoch, total / n)
