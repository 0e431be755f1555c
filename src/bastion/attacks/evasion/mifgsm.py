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

from ..base import Attack, AttackBatch, register
from .losses import as_logits, get_loss
from .steps import ascent_direction

__all__ = ["MIFGSM"]


@register("mifgsm")
@dataclass(kw_only=True, eq=False, repr=False)
class MIFGSM(Attack):
    """MI-FGSM; Linf or L2. ``steps`` iterations of size eps/steps, momentum ``decay`` (mu).

    Args (besides :class:`~bastion.attacks.Attack`'s eps, norm, batch_size, generator, seed):
        steps: iterations. decay: momentum decay factor mu. loss: 'ce', 'margin' or 'dlr'.
    """

    norms = ("linf", "l2")

    steps: int = 10
    decay: float = 1.0
    loss: str = "ce"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._positive("steps", self.steps, integer=True)
        self._positive("decay", self.decay, allow_zero=True)
        get_loss(self.loss)
        self.steps = int(self.steps)
        self.decay = float(self.decay)

    def _attack(self, batch: AttackBatch) -> Tensor:
        model, x, threat = batch.model, batch.x, batch.threat
        loss_fn = get_loss(self.loss)
        alpha = threat.radius / self.steps
        momentum = torch.zeros_like(x)
        xa = x.clone()
        for _ in range(self.steps):
            xa.requires_grad_(True)
            loss = loss_fn(as_logits(model.logits(xa), model.output), batch.y, batch.targets).sum()
            (g,) = torch.autograd.grad(loss, xa)
            batch.budget.backward += int(x.shape[0])
            l1 = g.reshape(g.shape[0], -1).abs().sum(dim=1).clamp_min(1e-12)
            momentum = self.decay * momentum + g / l1.view(-1, *([1] * (x.dim() - 1)))
            xa = threat.project(x, xa.detach() + alpha * ascent_direction(momentum, threat.norm))
        return xa
