"""Momentum iterative FGSM (Dong et al. 2018, "Boosting Adversarial Attacks with Momentum").

Accumulates the L1-normalised gradient with decay ``decay`` and steps along its sign (Linf) or
its L2 direction, alpha = eps / steps per step. Momentum stabilises the update direction, which
makes the examples transfer better to other models (the transfer attack of black-box evaluation).
Inputs (N, *input_shape), labels (N,).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..base import AttackBatch, positive, register
from .gradient import GradientAttack
from .steps import ascent_direction

__all__ = ["MIFGSM"]


@register("mifgsm")
@dataclass(kw_only=True, eq=False, repr=False)
class MIFGSM(GradientAttack):
    """MI-FGSM; Linf or L2. ``steps`` iterations of size eps/steps, momentum ``decay`` (mu).

    Args (besides :class:`~.gradient.GradientAttack`'s, ``loss`` included):
        steps: iterations. decay: momentum decay factor mu.
    """

    norms = ("linf", "l2")

    steps: int = positive(10, integer=True)
    decay: float = positive(1.0, allow_zero=True)

    def _attack(self, batch: AttackBatch) -> Tensor:
        x, threat = batch.x, batch.threat
        alpha = threat.radius / self.steps
        momentum = torch.zeros_like(x)
        xa = x.clone()
        for _ in range(self.steps):
            _, g, _ = self._loss_gradient(batch, xa, batch.targets)
            l1 = g.reshape(g.shape[0], -1).abs().sum(dim=1).clamp_min(1e-12)
            momentum = self.decay * momentum + g / l1.view(-1, *([1] * (x.dim() - 1)))
            xa = threat.project(x, xa.detach() + alpha * ascent_direction(momentum, threat.norm))
        return xa
