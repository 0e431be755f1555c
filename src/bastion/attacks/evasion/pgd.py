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

import torch
from torch import Tensor

from ...models.base import Classifier
from ...threat import ThreatModel
from ..base import Attack, Budget, is_adversarial, register
from .losses import as_logits, get_loss
from .steps import ascent_direction, random_start

__all__ = ["PGD"]


@register("pgd")
class PGD(Attack):
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

    def __init__(
        self,
        *,
        eps: float = 0.3,
        norm: str = "linf",
        steps: int = 40,
        step_size: float | None = None,
        random_start: bool = True,
        restarts: int = 1,
        loss: str = "ce",
        early_stop: bool = True,
        batch_size: int = 1000,
        generator: torch.Generator | None = None,
        seed: int | None = 0,
    ) -> None:
        super().__init__(eps=eps, norm=norm, batch_size=batch_size, generator=generator, seed=seed)
        self._positive("steps", steps, integer=True)
        self._positive("restarts", restarts, integer=True)
        if step_size is not None:
            self._positive("step_size", step_size)
        get_loss(loss)
        self.steps = int(steps)
        self.step_size = step_size
        self.random_start = bool(random_start)
        self.restarts = int(restarts)
        self.loss = loss
        self.early_stop = bool(early_stop)

    def _step_size(self) -> float:
        return self.step_size if self.step_size is not None else 2.5 * self.radius / self.steps

    def _run(
        self,
        model: Classifier,
        x: Tensor,
        y: Tensor,
        t: Tensor | None,
        threat: ThreatModel,
        generator: torch.Generator,
        budget: Budget,
    ) -> Tensor:
        loss_fn = get_loss(self.loss)
        alpha = self._step_size()
        eps = threat.radius
        x_cur = threat.project(x, random_start(x, threat.norm, eps, generator)) if self.random_start else x.clone()
        active = torch.arange(x.shape[0], device=x.device)
        for _ in range(self.steps):
            if active.numel() == 0:
                break
            xa = x_cur[active].requires_grad_(True)
            ya = y[active]
            ta = t[active] if t is not None else None
            z = as_logits(model.logits(xa), model.output)
            loss = loss_fn(z, ya, ta).sum()
            (g,) = torch.autograd.grad(loss, xa)
            budget.backward += int(active.numel())
            xa = xa.detach()
            if self.early_stop:
                keep = ~is_adversarial(z.detach(), ya, ta)
                if not bool(keep.all()):
                    active, xa, g = active[keep], xa[keep], g[keep]
                    if active.numel() == 0:
                        break
            x0 = x[active]
            step = ascent_direction(g, threat.norm, x=xa, bounds=threat.bounds)
            x_cur[active] = threat.project(x0, xa + alpha * step)
        return x_cur

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
        best = self._run(model, x, y, targets, threat, generator, budget)
        if self.restarts == 1:
            return best
        with torch.no_grad():
            fooled = is_adversarial(model.logits(best), y, targets)
        for _ in range(self.restarts - 1):
            todo = torch.nonzero(~fooled).flatten()
            if todo.numel() == 0:
                break
            tt = targets[todo] if targets is not None else None
            cand = self._run(model, x[todo], y[todo], tt, threat, generator, budget)
            with torch.no_grad():
                ok = is_adversarial(model.logits(cand), y[todo], tt)
            best[todo[ok]] = cand[ok]
            fooled[todo[ok]] = True
        return best
