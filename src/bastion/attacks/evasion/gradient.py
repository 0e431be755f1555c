"""The base of the attacks that ascend a loss by its input gradient: FGSM, MI-FGSM, PGD and APGD.

They share the ``loss`` parameter (a name of :data:`~.losses.LOSSES`) and one step: the per-sample loss
of the model's logits at a point, its gradient with respect to the input and the logits, counting one
backward pass per sample. Inputs (n, *input_shape), labels and targets (n,).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ...errors import UsageError
from ..base import Attack, AttackBatch
from .losses import as_logits, get_loss

__all__ = ["GradientAttack"]


@dataclass(kw_only=True, eq=False, repr=False)
class GradientAttack(Attack):
    """An attack on the input gradient of a loss.

    Args (besides :class:`~bastion.attacks.Attack`'s eps, norm, batch_size, generator, seed):
        loss: 'ce', 'margin' or 'dlr' (see :mod:`bastion.attacks.evasion.losses`); targeted variants are
            used when ``targets`` are passed. A subclass may restrict the choice (``_losses``).
    """

    _losses: ClassVar[tuple[str, ...] | None] = None  # None: every loss of LOSSES

    loss: str = "ce"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self._losses is None:
            get_loss(self.loss)
        elif self.loss not in self._losses:
            choices = " or ".join(map(repr, self._losses))
            raise UsageError(f"{type(self).__name__} supports loss {choices}, got {self.loss!r}")

    def _loss_gradient(self, batch: AttackBatch, x: Tensor, targets: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """At the points ``x`` (one per sample of ``batch``): the per-sample loss (n,) towards ``targets``
        (the batch's own, or others: APGD-T aims its loss at each likely class in turn), its gradient with
        respect to ``x`` and the logits (n, n_classes), all detached. Counts n backward passes."""
        model = batch.model
        xa = x.detach().requires_grad_(True)
        z = as_logits(model.logits(xa), model.output)
        loss = get_loss(self.loss)(z, batch.y, targets)
        (g,) = torch.autograd.grad(loss.sum(), xa)
        batch.budget.backward += int(xa.shape[0])
        return loss.detach(), g, z.detach()
