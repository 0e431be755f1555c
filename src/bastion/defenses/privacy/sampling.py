"""Poisson sampling for the trainer and noise from the operating system's CSPRNG.

- :class:`PoissonSampler`: Opacus' ``DPDataLoader`` sampling as a :class:`bastion.training.Trainer` sampler —
  every record joins each step independently with probability ``q`` (the accountant's assumption), from the run's
  generator or, ``secure``, from ``os.urandom``.
- :func:`secure_optimizer`: an Opacus ``DPOptimizer`` whose Gaussian noise comes from ``os.urandom`` (Box-Muller
  on 53-bit uniforms) as the sum of four draws over two — Opacus' ``secure_mode`` defence against floating-point
  attacks (Holohan & Braghin 2021) — for when ``torchcsprng``, which Opacus' own secure mode needs, is missing.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["PoissonSampler", "secure_optimizer", "urandom_normal", "urandom_uniform"]


def urandom_uniform(n: int) -> np.ndarray:
    """n floats uniform in [0, 1) from the OS's CSPRNG (53 random bits each)."""
    return (np.frombuffer(os.urandom(8 * n), dtype=np.uint64) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def urandom_normal(shape: torch.Size, std: float) -> Tensor:
    """Gaussian noise from ``os.urandom`` (Box-Muller), as the sum of four draws over two (Opacus' secure_mode)."""
    n = int(np.prod(shape)) if len(shape) else 1
    u1, u2 = urandom_uniform(4 * n), urandom_uniform(4 * n)
    z = np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)
    return torch.from_numpy(z.reshape(4, n).sum(0) / 2.0 * std).float().reshape(shape)


def secure_optimizer(optimizer: Any) -> Any:
    """``optimizer`` (an Opacus ``DPOptimizer``) drawing its noise from ``os.urandom``."""
    from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

    class UrandomDPOptimizer(type(optimizer)):  # type: ignore[misc]
        def add_noise(self) -> None:
            for p in self.params:
                _check_processed_flag(p.summed_grad)
                noise = urandom_normal(p.summed_grad.shape, self.noise_multiplier * self.max_grad_norm)
                p.grad = (p.summed_grad + noise.to(p.summed_grad)).view_as(p)
                _mark_as_processed(p.summed_grad)

    optimizer.__class__ = UrandomDPOptimizer
    return optimizer


class PoissonSampler:
    """Opacus' Poisson sampling for the trainer: ``ceil(N / batch_size)`` steps per epoch, each record in each step
    with probability ``q = 1 / steps`` (from the run's generator, or ``os.urandom`` when ``secure``)."""

    def __init__(self, n: int, batch_size: int, *, secure: bool = False) -> None:
        self.steps = math.ceil(n / batch_size)
        self.sample_rate = 1.0 / self.steps
        self.secure = secure

    def __call__(self, n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
        out = []
        for _ in range(self.steps):
            if self.secure:
                u = torch.from_numpy(urandom_uniform(n))
            else:
                u = torch.rand(n, generator=generator, device=generator.device)
            out.append(torch.nonzero(u < self.sample_rate).flatten().to(generator.device))
        return out
