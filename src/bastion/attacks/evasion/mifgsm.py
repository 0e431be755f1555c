"""Momentum iterative FGSM (Dong et al. 2018, "Boosting Adversarial Attacks with Momentum").

Accumulates the L1-normalised gradient with decay ``decay`` and steps along its sign (Linf) or
its L2 direction, alpha = eps / steps per step. Momentum stabilises the update direction, which
makes the examples transfer better to other models (the transfer attack of black-box evaluation).
Inputs (N, *input_shape), labels (N,).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...models.base import Classifier
from ...threat import ThreatModel
from ..base import Attack, Budget, register
from .losses import as_logits, get_loss
from .steps import ascent_direction

__all__ = ["MIFGSM"]


@register("mifgsm")
class MIFGSM(Attack):
    """MI-FGSM; Linf or L2. ``steps`` iterations of size eps/steps, momentum ``decay`` (mu)."""

    norms = ("linf", "l2")

    def __init__(
        self,
        *,
        eps: float = 0.3,
        norm: str = "linf",
        steps: int = 10,
        decay: float = 1.0,
        loss: str = "ce",
        batch_size: int = 1000,
        generator: torch.Generator | None = None,
        seed: int | None = 0,
    ) -> None:
        super().__init__(eps=eps, norm=norm, batch_size=batch_size, generator=generator, seed=seed)
        self._positive("steps", steps, integer=True)
        self._positive("decay", decay, allow_zero=True)
        get_loss(loss)
        self.steps = int(steps)
        self.decay = float(decay)
        self.loss = loss

    def _attack(
        self,
        model: Classifier,
        x: Tensor,
        y: Tensor,
        targets: Tensor | None,
        threat: ThreatModel,
        generator: torch.Generator,
        budget: Budget,
    ) -> Tensor:
        loss_fn = get_loss(self.loss)
        alpha = threat.radius / self.steps
        momentum = torch.zeros_like(x)
        xa = x.clone()
        for _ in range(self.steps):
            xa.requires_grad_(True)
            loss = loss_fn(as_logits(model.logits(xa), model.output), y, targets).sum()
            (g,) = torch.autograd.grad(loss, xa)
            budget.backward += int(x.shape[0])
            l1 = g.reshape(g.shape[0], -1).abs().sum(dim=1).clamp_min(1e-12)
            momentum = self.decay * momentum + g / l1.view(-1, *([1] * (x.dim() - 1)))
            xa = threat.project(x, xa.detach() + alpha * ascent_direction(momentum, threat.norm))
        return xa
