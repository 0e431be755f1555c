"""Projected gradient descent (Madry et al. 2018, "Towards Deep Learning Models Resistant to
Adversarial Attacks").

Threat model: Linf, L2 or L1 ball of radius eps intersected with the input bounds. Inputs
(N, *input_shape), labels (N,). Each step: x <- Proj(x + step_size * d), where d is the
steepest-ascent direction of the loss for the norm (sign for Linf, normalised gradient for L2,
sparse L1 descent for L1). Random start inside the ball; ``restarts`` re-run the attack from new
random starts on the samples not yet fooled.

``early_stop=True`` (evaluation mode, AutoAttack's protocol): a sample leaves the batch as soon as
the model misclassifies it (or predicts its target), so the attack costs little on weak models;
``early_stop=False`` runs every sample for all steps (the classic fixed-budget loop).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..base import AttackBatch, positive, register
from .gradient import GradientAttack
from .steps import ascent_direction, random_start

__all__ = ["PGD"]


@register("pgd")
@dataclass(kw_only=True, eq=False, repr=False)
class PGD(GradientAttack):
    """PGD with random start and restarts; Linf, L2, L1.

    Args:
        eps: radius of the ball. norm: 'linf', 'l2' or 'l1'.
        steps: iterations per restart. step_size: per-step move (default 2.5 * eps / steps).
        random_start: start at a uniform random point of the ball.
        restarts: number of runs; later runs only attack samples not yet fooled.
        loss: 'ce', 'margin' or 'dlr' (see :mod:`bastion.attacks.evasion.losses`).
        early_stop: drop a sample from the batch once it is adversarial.
    """

    norms = ("linf", "l2", "l1")

    steps: int = positive(40, integer=True)
    step_size: float | None = positive(None)
    random_start: bool = True
    restarts: int = positive(1, integer=True)
    early_stop: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.random_start = bool(self.random_start)
        self.early_stop = bool(self.early_stop)

    def _step_size(self) -> float:
        return self.step_size if self.step_size is not None else 2.5 * self.radius / self.steps

    def _run(self, batch: AttackBatch) -> Tensor:
        x, threat = batch.x, batch.threat
        alpha = self._step_size()
        eps = threat.radius
        x_cur = (
            threat.project(x, random_start(x, threat.norm, eps, batch.generator)) if self.random_start else x.clone()
        )
        active = torch.arange(x.shape[0], device=x.device)
        for _ in range(self.steps):
            if active.numel() == 0:
                break
            rows = batch.rows(active)
            xa = x_cur[active]
            _, g, z = self._loss_gradient(rows, xa, rows.targets)
            if self.early_stop:
                keep = ~rows.is_adversarial(z)
                if not bool(keep.all()):
                    active, xa, g = active[keep], xa[keep], g[keep]
                    if active.numel() == 0:
                        break
            x0 = x[active]
            step = ascent_direction(g, threat.norm, x=xa, bounds=threat.bounds)
            x_cur[active] = threat.project(x0, xa + alpha * step)
        return x_cur

    def _attack(self, batch: AttackBatch) -> Tensor:
        best = self._run(batch)
        if self.restarts == 1:
            return best
        with torch.no_grad():
            fooled = batch.is_adversarial(batch.model.logits(best))
        for _ in range(self.restarts - 1):
            todo = torch.nonzero(~fooled).flatten()
            if todo.numel() == 0:
                break
            sub = batch.rows(todo)
            cand = self._run(sub)
            with torch.no_grad():
                ok = sub.is_adversarial(batch.model.logits(cand))
            best[todo[ok]] = cand[ok]
            fooled[todo[ok]] = True
        return best
