"""Fast gradient sign method (Goodfellow et al. 2015, "Explaining and Harnessing Adversarial
Examples"), and its L2 form, the fast gradient method.

One step of size eps from the clean input along sign(grad) (Linf) or grad/||grad||_2 (L2) of the
cross-entropy (or minus the cross-entropy with the target). Inputs (N, *input_shape), labels (N,).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...models.base import Classifier
from ...threat import ThreatModel
from ..base import Attack, Budget, register
from .losses import as_logits, get_loss
from .steps import ascent_direction

__all__ = ["FGSM"]


@register("fgsm")
class FGSM(Attack):
    """Single-step attack: x + eps * direction(grad loss). Linf or L2."""

    norms = ("linf", "l2")

    def __init__(
        self,
        *,
        eps: float = 0.3,
        norm: str = "linf",
        loss: str = "ce",
        batch_size: int = 1000,
        generator: torch.Generator | None = None,
        seed: int | None = 0,
    ) -> None:
        super().__init__(eps=eps, norm=norm, batch_size=batch_size, generator=generator, seed=seed)
        get_loss(loss)
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
        xa = x.clone().requires_grad_(True)
        loss = get_loss(self.loss)(as_logits(model.logits(xa), model.output), y, targets).sum()
        (g,) = torch.autograd.grad(loss, xa)
        budget.backward += int(x.shape[0])
        return x + threat.radius * ascent_direction(g, threat.norm)
