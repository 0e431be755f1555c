"""Random-noise baseline: the floor any query-based attack must beat at the same budget.

Threat model: Linf or L2 ball of radius eps intersected with the input bounds. Inputs
(N, *input_shape), labels (N,), optional targets (N,). Each draw is a random point on the ball's
surface — a uniform random sign vector times eps (a vertex of the Linf cube) or a uniform random
direction scaled to eps (L2) — clipped to the bounds; the first draw that fools the model is kept,
up to ``max_queries`` draws per image. Never uses gradients.

Query accounting (exact): every draw is one model call on all images not yet fooled; no clean
query is made. ``extra["queries"]`` holds the draws each image used (the index of its first
fooling draw, or ``max_queries``), ``extra["query_success"]`` whether a draw fooled it; they sum
to ``AttackResult.queries``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..base import Attack, AttackBatch, positive, register

__all__ = ["RandomNoise"]


@register("noise")
@dataclass(kw_only=True, eq=False, repr=False)
class RandomNoise(Attack):
    """Uniform random noise on the eps-sphere, first fooling draw kept (a baseline, not an attack).

    Args:
        eps: radius. norm: 'linf' or 'l2'. max_queries: draws per image.
    """

    norms = ("linf", "l2")
    needs_gradients = False

    max_queries: int = positive(1000, integer=True)

    @staticmethod
    def _draw(x: Tensor, norm: str, eps: float, generator: torch.Generator) -> Tensor:
        if norm == "linf":
            return eps * (2 * torch.randint(0, 2, x.shape, generator=generator, device=x.device) - 1).to(x.dtype)
        g = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return eps * g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))

    def _attack(self, batch: AttackBatch) -> Tensor:
        x, threat = batch.x, batch.threat
        n = x.shape[0]
        lo, hi = threat.bounds
        x_adv = x.clone()
        queries = torch.zeros(n, dtype=torch.long, device=x.device)
        done = torch.zeros(n, dtype=torch.bool, device=x.device)
        with torch.no_grad():
            for _ in range(self.max_queries):
                active = torch.nonzero(~done).flatten()
                if active.numel() == 0:
                    break
                cand = (x[active] + self._draw(x[active], threat.norm, threat.radius, batch.generator)).clamp(lo, hi)
                fooled = batch.rows(active).is_adversarial(batch.model.logits(cand))
                queries[active] += 1
                x_adv[active[fooled]] = cand[fooled]
                done[active[fooled]] = True
        batch.budget.add_per_sample("queries", queries)
        batch.budget.add_per_sample("query_success", done.clone())
        return x_adv
