"""Fast gradient sign method (Goodfellow et al. 2015, "Explaining and Harnessing Adversarial
Examples"), and its L2 form, the fast gradient method.

One step of size eps from the clean input along sign(grad) (Linf) or grad/||grad||_2 (L2) of the
cross-entropy (or minus the cross-entropy with the target). Inputs (N, *input_shape), labels (N,).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..base import Attack, AttackBatch, register
from .losses import as_logits, get_loss
from .steps import ascent_direction

__all__ = ["FGSM"]


@register("fgsm")
@dataclass(kw_only=True, eq=False, repr=False)
class FGSM(Attack):
    """Single-step attack: x + eps * direction(grad loss). Linf or L2.

    Args (besides :class:`~bastion.attacks.Attack`'s eps, norm, batch_size, generator, seed):
        loss: 'ce', 'margin' or 'dlr' (see :mod:`bastion.attacks.evasion.losses`).
    """

    norms = ("linf", "l2")

    loss: str = "ce"

    def __post_init__(self) -> None:
        super().__post_init__()
        get_loss(self.loss)

    def _attack(self, batch: AttackBatch) -> Tensor:
        model, x, threat = batch.model, batch.x, batch.threat
        xa = x.clone().requires_grad_(True)
        loss = get_loss(self.loss)(as_logits(model.logits(xa), model.output), batch.y, batch.targets).sum()
        (g,) = torch.autograd.grad(loss, xa)
        batch.budget.backward += int(x.shape[0])
        return x + threat.radius * ascent_direction(g, threat.norm)
