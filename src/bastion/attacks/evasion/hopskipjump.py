"""HopSkipJump (Chen, Jordan & Wainwright 2020, "HopSkipJumpAttack: A Query-Efficient Decision-Based
Attack", IEEE S&P), a batched port of the authors' ``hsja.py``.

Threat model: minimum-norm L2 or Linf (``eps=None`` by default; a given ``eps`` stops an image once its
best adversarial is inside the ball, and the library projects the result onto it). Decision-based: the
attack sees only the model's predicted labels, never scores or gradients. Inputs (N, *input_shape)
inside the model's bounds, labels (N,), optional targets (N,).

Per image, as in the reference:

1. **Initialisation**: uniform noise in the bounds, redrawn until adversarial (up to ``init_trials``),
   then a binary search on the blend ``(1 - a) x + a noise`` to the decision boundary. (The reference
   searches the blend to a threshold of 1e-3 and then again to theta; one search to theta reaches the
   same point with about ten fewer queries.) Images whose noise search fails come back unperturbed.
2. **Iteration t**: estimate the gradient direction of the decision function at the boundary point from
   ``min(init_num_evals * sqrt(t), max_num_evals)`` label queries at ``x_t + delta u`` (u Gaussian for
   L2, uniform in [-1, 1]^d for Linf, unit L2 norm), with baseline subtraction; ``delta`` is
   ``0.1 * (hi - lo)`` at t = 1 and then ``sqrt(d) theta dist`` (L2) or ``d theta dist`` (Linf), where dist
   is the distance of the last point handed to the binary search.
3. **Geometric step search**: ``xi = dist_t / sqrt(t)``, halved until ``x_t + xi v`` is adversarial
   (v the unit gradient estimate for L2, its sign for Linf).
4. **Binary search** back to the boundary between x and the new point — on the blend for L2, on the
   Linf box radius for Linf — to the paper's threshold ``theta = gamma / d^(3/2)`` (L2) or
   ``gamma / d^2`` (Linf; relative to the current distance and scaled by ``hi - lo``).

The per-image smallest-norm boundary point is returned. ``max_queries`` bounds every image's queries
**exactly**, initialisation and binary searches included; the count of each image is in
``result.extra['queries']`` and their sum is ``result.queries``. Batched over images: each round's
queries of all active images go through the model in as few calls as possible (at most
``query_batch_size`` inputs each), which is where the speed comes from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ...errors import UsageError
from ...threat import perturbation_norm
from ..base import AttackBatch, positive, register
from .decision import DecisionAttack, DecisionOracle, boundary_search, broadcast, noise_init

__all__ = ["DecisionOracle", "HopSkipJump", "boundary_search", "noise_init"]


@register("hopskipjump")
@dataclass(kw_only=True, eq=False, repr=False)
class HopSkipJump(DecisionAttack):
    """HopSkipJump decision-based minimum-norm attack, L2 or Linf; targeted when targets are passed.

    Args:
        eps: optional budget: an image stops once its best adversarial is within eps, and the result is
            projected onto the ball. ``None`` (default): minimise the norm until the query budget is spent.
        norm: 'l2' or 'linf'.
        max_queries, init_trials, query_batch_size: see :class:`~.decision.DecisionAttack`.
        steps: optional cap on the number of iterations (``None``: until ``max_queries``).
        init_num_evals: gradient-estimation queries at iteration 1; iteration t uses init * sqrt(t).
        max_num_evals: cap on the gradient-estimation queries of one iteration.
        gamma: binary-search threshold factor (theta = gamma / d^(3/2) for L2, gamma / d^2 for Linf).
    """

    norms = ("l2", "linf")

    steps: int | None = positive(None, integer=True)
    init_num_evals: int = positive(100, integer=True)
    max_num_evals: int = positive(10_000, integer=True)
    gamma: float = positive(1.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_num_evals < self.init_num_evals:
            raise UsageError(f"max_num_evals ({self.max_num_evals}) must be >= init_num_evals ({self.init_num_evals})")

    def _theta(self, d: int) -> float:
        return self.gamma / (d * math.sqrt(d)) if self.norm == "l2" else self.gamma / d**2

    def _gradient(
        self,
        oracle: DecisionOracle,
        cur: Tensor,
        idx: Tensor,
        counts: Tensor,
        delta: Tensor,
        generator: torch.Generator,
    ) -> Tensor:
        """Monte-Carlo estimate of the unit gradient direction of the decision function at the boundary
        points ``cur`` (rows of images ``idx``) from ``counts[i]`` probes each, with baseline subtraction."""
        m = cur.shape[0]
        flat_shape = (m, cur[0].numel())
        sum_rv = torch.zeros(flat_shape, dtype=cur.dtype, device=cur.device)
        sum_frv = torch.zeros_like(sum_rv)
        sum_f = torch.zeros(m, dtype=cur.dtype, device=cur.device)
        row_owner = torch.repeat_interleave(torch.arange(m, device=cur.device), counts)
        lo, hi = oracle.lo, oracle.hi
        for s in range(0, row_owner.numel(), self.query_batch_size):
            own = row_owner[s : s + self.query_batch_size]
            shape = (own.numel(), *cur.shape[1:])
            if self.norm == "l2":
                rv = torch.randn(shape, generator=generator, device=cur.device, dtype=cur.dtype)
            else:
                rv = 2 * torch.rand(shape, generator=generator, device=cur.device, dtype=cur.dtype) - 1
            rv = rv / broadcast(rv.flatten(1).norm(dim=1), rv)
            base, dl = cur[own], broadcast(delta[own], rv)
            probes = (base + dl * rv).clamp(lo, hi)
            rv = ((probes - base) / dl).flatten(1)
            f = 2 * oracle(probes, idx[own]).to(cur.dtype) - 1
            sum_rv.index_add_(0, own, rv)
            sum_frv.index_add_(0, own, f[:, None] * rv)
            sum_f.index_add_(0, own, f)
        n = counts.to(cur.dtype)
        fmean = sum_f / n
        # all probes adversarial (or none): mean of +-rv; otherwise subtract the baseline mean(f)
        uniform = fmean.abs() == 1
        grad = torch.where(uniform[:, None], sum_frv, sum_frv - fmean[:, None] * sum_rv) / n[:, None]
        grad = grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-30)
        return grad.view_as(cur)

    def _attack(self, batch: AttackBatch) -> Tensor:
        x, threat, generator = batch.x, batch.threat, batch.generator
        n, d = x.shape[0], x[0].numel()
        lo, hi = batch.model.bounds
        span = hi - lo
        theta = self._theta(d)
        # the reference blends to a threshold of 1e-3 for Linf, then searches the Linf box radius
        oracle, cur, found = self._start(batch, theta if self.norm == "l2" else 1e-3)
        idx = torch.nonzero(found).flatten()
        if idx.numel() and self.norm == "linf":
            cur[idx], _ = boundary_search(oracle, x[idx], cur[idx], idx, "linf", theta, span)
        # queries one iteration keeps back for the step search and the binary search after it
        reserve = 2 + math.ceil(math.log2(1 / theta)) + (0 if self.norm == "l2" else 1)
        out = x.clone()
        best_dist = torch.full((n,), float("inf"), dtype=x.dtype, device=x.device)
        init_dist = torch.full_like(best_dist, float("nan"))
        dist = perturbation_norm(cur - x, self.norm)
        dist_pre = dist.clone()  # not read before iteration 2, where it is the last step's distance
        out[idx] = cur[idx]
        best_dist[idx] = dist[idx]
        init_dist[idx] = dist[idx]
        live = found.clone()
        t = 0
        while True:
            t += 1
            if self.steps is not None and t > self.steps:
                break
            if threat.eps is not None:
                live &= best_dist > threat.eps
            num_evals = min(int(self.init_num_evals * math.sqrt(t)), self.max_num_evals)
            counts = torch.clamp(oracle.left() - reserve, max=num_evals)
            live &= counts >= 1
            idx = torch.nonzero(live).flatten()
            if idx.numel() == 0:
                break
            x0, xc = x[idx], cur[idx]
            delta = (
                torch.full((idx.numel(),), 0.1 * span, dtype=x.dtype, device=x.device)
                if t == 1
                else (math.sqrt(d) if self.norm == "l2" else d) * theta * dist_pre[idx]
            )
            delta = delta.clamp_min(1e-12 * span)
            grad = self._gradient(oracle, xc, idx, counts[idx], delta, generator)
            update = grad if self.norm == "l2" else grad.sign()
            xi = dist[idx] / math.sqrt(t)
            stepped = _geometric_step(oracle, xc, update, xi, idx, (lo, hi))
            live[idx[~stepped]] = False  # out of queries mid-search: keep the current point
            ok = torch.nonzero(stepped).flatten()
            if ok.numel() == 0:
                continue
            gi = idx[ok]
            p = (xc[ok] + broadcast(xi[ok], xc) * update[ok]).clamp(lo, hi)
            new, dist_pre[gi] = boundary_search(oracle, x0[ok], p, gi, self.norm, theta, span)
            cur[gi] = new
            dist[gi] = perturbation_norm(new - x0[ok], self.norm)
            better = dist[gi] < best_dist[gi]
            out[gi[better]] = new[better]
            best_dist[gi[better]] = dist[gi][better]
        batch.budget.add_per_sample("queries", oracle.used.clone())
        batch.budget.add_per_sample("initial_norms", init_dist)
        return out


def _geometric_step(
    oracle: DecisionOracle, xc: Tensor, update: Tensor, xi: Tensor, idx: Tensor, bounds: tuple[float, float]
) -> Tensor:
    """The geometric step search: halve each point's step ``xi`` (in place) until ``xc + xi * update`` is
    adversarial or its queries run out; which points found such a step."""
    stepped = torch.zeros(idx.numel(), dtype=torch.bool, device=xc.device)
    for _ in range(64):
        todo = torch.nonzero(~stepped & (oracle.left()[idx] > 0)).flatten()
        if todo.numel() == 0:
            break
        adv = oracle((xc[todo] + broadcast(xi[todo], xc) * update[todo]).clamp(*bounds), idx[todo])
        stepped[todo[adv]] = True
        xi[todo[~adv]] /= 2
    return stepped
