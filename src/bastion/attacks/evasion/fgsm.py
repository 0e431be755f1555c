"""Fast gradient sign method (Goodfellow et al. 2015, "Explaining and Harnessing Adversarial
Examples"), and its L2 form, the fast gradient method.

One step of size eps from the clean input along sign(grad) (Linf) or grad/||grad||_2 (L2) of the
cross-entropy (or minus the cross-entropy with the target). Inputs (N, *input_shape), labels (N,).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..base import AttackBatch, register
from .gradient import GradientAttack
from .steps import ascent_direction

__all__ = ["FGSM"]


@register("fgsm")
@dataclass(kw_only=True, eq=False, repr=False)
class FGSM(GradientAttack):
    """Single-step attack: x + eps * direction(grad loss). Linf or L2; ``loss`` as in
    :class:`~.gradient.GradientAttack`."""

    norms = ("linf", "l2")

    def _attack(self, batch: AttackBatch) -> Tensor:
        _, g, _ = self._loss_gradient(batch, batch.x, batch.targets)
        return batch.x + batch.threat.radius * ascent_direction(g, batch.threat.norm)
