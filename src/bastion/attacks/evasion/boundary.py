"""The Boundary attack (Brendel, Rauber & Bethge 2018, "Decision-Based Adversarial Attacks: Reliable
Attacks Against Black-Box Machine Learning Models", ICLR), batched after Foolbox 3's ``BoundaryAttack``.

Threat model: minimum-norm L2 (``eps=None`` by default; a given ``eps`` stops an image once its best
adversarial is inside the ball, and the library projects the result onto it). Decision-based: only the
model's predicted labels are used. Inputs (N, *input_shape) inside the bounds, labels (N,), optional
targets (N,).

Start: uniform noise that is adversarial, blended towards the input by binary search (:mod:`.decision`,
shared with HopSkipJump); images without one come back unperturbed. Then, per image and step, with
``v = x - x_adv`` of length r:

* **orthogonal step**: a Gaussian direction orthogonal to v, scaled to ``spherical_step * r``, added and
  projected back onto the sphere of radius r around x (Pythagoras), clipped to the bounds;
* **source step**: a move of ``source_step * r`` towards x from there, clipped;
* the candidate replaces ``x_adv`` when it is adversarial and closer.

Step sizes adapt per image as in the paper: every ``update_stats_every_k`` steps the orthogonal
candidate is queried too; over the last 100 such checks, an orthogonal success rate above 0.5 grows both
steps by ``step_adaptation`` and one below 0.2 shrinks them; over the last 30 checks, a candidate success
rate above 0.25 grows the source step and one below 0.1 shrinks it. An image stops when its source
step falls below ``source_step_convergence`` or its ``max_queries`` (exact, initialisation included) are
spent. Per-image queries are in ``result.extra['queries']``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ...errors import UsageError
from ..base import AttackBatch, positive, register
from .decision import DecisionAttack

__all__ = ["BoundaryAttack"]


class _Stats:
    """Per-image ring buffers of the last ``maxlen`` outcomes (Foolbox's ArrayQueue, per image)."""

    def __init__(self, n: int, maxlen: int, device: torch.device) -> None:
        self.data = torch.zeros(n, maxlen, device=device)
        self.count = torch.zeros(n, dtype=torch.long, device=device)
        self.maxlen = maxlen

    def append(self, idx: Tensor, values: Tensor) -> None:
        self.data[idx, self.count[idx] % self.maxlen] = values.float()
        self.count[idx] += 1

    def full(self) -> Tensor:
        return self.count >= self.maxlen

    def mean(self) -> Tensor:
        return self.data.mean(dim=1)

    def clear(self, mask: Tensor) -> None:
        self.data[mask] = 0
        self.count[mask] = 0


@register("boundary")
@dataclass(kw_only=True, eq=False, repr=False)
class BoundaryAttack(DecisionAttack):
    """Boundary attack, decision-based minimum-norm L2; targeted when targets are passed.

    Args:
        eps: optional L2 budget: an image stops once its best adversarial is within eps, and the result is
            projected onto the ball. ``None`` (default): minimise until the query budget is spent.
        max_queries, init_trials, query_batch_size: see :class:`~.decision.DecisionAttack`.
        spherical_step: initial orthogonal step, relative to the current distance.
        source_step: initial step towards the input, relative to the current distance.
        source_step_convergence: an image stops once its source step is below this.
        step_adaptation: factor by which step sizes grow or shrink.
        update_stats_every_k: query the orthogonal candidate (and update the statistics) every k steps.
    """

    norms = ("l2",)

    spherical_step: float = positive(1e-2)
    source_step: float = positive(1e-2)
    source_step_convergence: float = positive(1e-7)
    step_adaptation: float = 1.5
    update_stats_every_k: int = positive(10, integer=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.step_adaptation) and self.step_adaptation > 1):
            raise UsageError(f"step_adaptation must be a number > 1, got {self.step_adaptation!r}")
        self.step_adaptation = float(self.step_adaptation)

    def _proposals(
        self, x0: Tensor, adv: Tensor, sph: Tensor, src: Tensor, lo: float, hi: float, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Foolbox's ``draw_proposals`` with an independent Gaussian per image: (candidates, spherical)."""
        shape = x0.shape
        x0f, advf = x0.flatten(1), adv.flatten(1)
        v = x0f - advf
        r = v.norm(dim=1, keepdim=True).clamp_min(1e-30)
        u = v / r
        eta = torch.randn(advf.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        eta = eta - (eta * u).sum(dim=1, keepdim=True) * u
        eta = eta * (sph[:, None] * r / eta.norm(dim=1, keepdim=True).clamp_min(1e-30))
        spherical = (x0f + (eta - v) / (sph[:, None] ** 2 + 1).sqrt()).clamp(lo, hi)
        w = x0f - spherical
        wn = w.norm(dim=1, keepdim=True).clamp_min(1e-30)
        length = (src[:, None] * r + wn - r).clamp_min(0) / wn  # corrects for leaving the sphere by clipping
        cand = (spherical + length * w).clamp(lo, hi)
        return cand.view(shape), spherical.view(shape)

    def _attack(self, batch: AttackBatch) -> Tensor:
        x, threat, generator = batch.x, batch.threat, batch.generator
        n, d = x.shape[0], x[0].numel()
        lo, hi = batch.model.bounds
        oracle, best, found = self._start(batch, 1 / (d * math.sqrt(d)))
        dist = (best - x).flatten(1).norm(dim=1)
        init_dist = torch.where(found, dist, torch.full_like(dist, float("nan")))
        sph = torch.full((n,), self.spherical_step, dtype=x.dtype, device=x.device)
        src = torch.full_like(sph, self.source_step)
        stats_sph = _Stats(n, 100, x.device)
        stats_step = _Stats(n, 30, x.device)
        live = found.clone()
        step = 0
        while True:
            step += 1
            check = step % self.update_stats_every_k == 0
            live &= (src >= self.source_step_convergence) & (oracle.left() >= (2 if check else 1))
            if threat.eps is not None:
                live &= dist > threat.eps
            a = torch.nonzero(live).flatten()
            if a.numel() == 0:
                break
            cand, spherical = self._proposals(x[a], best[a], sph[a], src[a], lo, hi, generator)
            is_adv = oracle(cand, a)
            new_dist = (cand - x[a]).flatten(1).norm(dim=1)
            take = is_adv & (new_dist < dist[a])
            best[a[take]] = cand[take]
            dist[a[take]] = new_dist[take]
            if not check:
                continue
            stats_sph.append(a, oracle(spherical, a))
            stats_step.append(a, is_adv)
            full, p = stats_sph.full(), stats_sph.mean()
            up, down = full & (p > 0.5), full & (p < 0.2)
            sph = torch.where(up, sph * self.step_adaptation, torch.where(down, sph / self.step_adaptation, sph))
            src = torch.where(up, src * self.step_adaptation, torch.where(down, src / self.step_adaptation, src))
            stats_sph.clear(up | down)
            full, p = stats_step.full(), stats_step.mean()
            up, down = full & (p > 0.25), full & (p < 0.1)
            src = torch.where(up, src * self.step_adaptation, torch.where(down, src / self.step_adaptation, src))
            stats_step.clear(up | down)
        batch.budget.add_per_sample("queries", oracle.used.clone())
        batch.budget.add_per_sample("initial_norms", init_dist)
        return best
