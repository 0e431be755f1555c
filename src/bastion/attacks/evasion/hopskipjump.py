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
from ...models.base import Classifier
from ...threat import perturbation_norm
from ..base import Attack, AttackBatch, register

__all__ = ["DecisionOracle", "HopSkipJump", "boundary_search", "noise_init"]


def _bc(v: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-sample vector (m,) to broadcast against ``like`` (m, ...)."""
    return v.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


class DecisionOracle:
    """Label-only access to a model for one batch of images: ``oracle(inputs, owners)`` says which of
    ``inputs`` are adversarial for the images ``owners`` (indices into the batch), counts each query
    against its owner in ``used`` and passes at most ``chunk`` inputs to the model per call."""

    def __init__(self, model: Classifier, y: Tensor, targets: Tensor | None, max_queries: int, chunk: int) -> None:
        self.model, self.y, self.targets = model, y, targets
        self.max_queries, self.chunk = max_queries, chunk
        self.used = torch.zeros(y.shape[0], dtype=torch.long, device=y.device)
        self.lo, self.hi = model.bounds

    def left(self) -> Tensor:
        """Queries each image may still make, shape (N,)."""
        return self.max_queries - self.used

    @torch.no_grad()
    def __call__(self, inputs: Tensor, owners: Tensor) -> Tensor:
        if inputs.shape[0] == 0:
            return torch.zeros(0, dtype=torch.bool, device=owners.device)
        inputs = inputs.clamp(self.lo, self.hi)
        preds = [
            self.model.logits(inputs[s : s + self.chunk]).argmax(dim=1) for s in range(0, inputs.shape[0], self.chunk)
        ]
        pred = torch.cat(preds).to(owners.device)
        self.used += torch.bincount(owners, minlength=self.used.shape[0])
        return pred == self.targets[owners] if self.targets is not None else pred != self.y[owners]


def noise_init(oracle: DecisionOracle, x: Tensor, trials: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Uniform noise in the bounds, redrawn per image until adversarial (at most ``trials`` draws, one
    query each). Returns (noise (N, ...), found (N,) bool); rows not found hold ``x``."""
    lo, hi = oracle.lo, oracle.hi
    noise, found = x.clone(), torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    todo = torch.arange(x.shape[0], device=x.device)
    for _ in range(trials):
        todo = todo[oracle.left()[todo] > 0]
        if todo.numel() == 0:
            break
        cand = lo + (hi - lo) * torch.rand(
            (todo.numel(), *x.shape[1:]), generator=generator, device=x.device, dtype=x.dtype
        )
        ok = oracle(cand, todo)
        noise[todo[ok]] = cand[ok]
        found[todo[ok]] = True
        todo = todo[~ok]
    return noise, found


def _toward(x0: Tensor, p: Tensor, a: Tensor, norm: str) -> Tensor:
    """The point at 'distance' a between x0 (a = 0) and p: blend weight for L2, box radius for Linf."""
    if norm == "l2":
        w = _bc(a, x0)
        return (1 - w) * x0 + w * p
    r = _bc(a, x0)
    return torch.clamp(p, x0 - r, x0 + r)


def boundary_search(
    oracle: DecisionOracle, x0: Tensor, p: Tensor, owners: Tensor, norm: str, theta: float, span: float
) -> tuple[Tensor, Tensor]:
    """Binary search between the clean ``x0`` and the adversarial ``p`` (rows of the images ``owners``),
    batched, to the reference's threshold. Returns (boundary points — adversarial, as every kept upper end
    was — and the distances of ``p`` to ``x0``, the reference's ``dist_post_update``). An image that runs
    out of queries stops where it is."""
    dist_p = perturbation_norm(p - x0, norm).double()
    if norm == "l2":
        high = torch.ones_like(dist_p)
        thr = torch.full_like(dist_p, theta)
    else:
        high = dist_p.clone()
        thr = torch.minimum(dist_p * theta, torch.full_like(dist_p, theta * span))
    low = torch.zeros_like(dist_p)
    while True:
        act = torch.nonzero(((high - low) > thr) & (oracle.left()[owners] > 0)).flatten()
        if act.numel() == 0:
            break
        mid = (high[act] + low[act]) / 2
        adv = oracle(_toward(x0[act], p[act], mid.to(x0.dtype), norm), owners[act])
        high[act] = torch.where(adv, mid, high[act])
        low[act] = torch.where(adv, low[act], mid)
    return _toward(x0, p, high.to(x0.dtype), norm), dist_p.to(x0.dtype)


@register("hopskipjump")
@dataclass(kw_only=True, eq=False, repr=False)
class HopSkipJump(Attack):
    """HopSkipJump decision-based minimum-norm attack, L2 or Linf; targeted when targets are passed.

    Args:
        eps: optional budget: an image stops once its best adversarial is within eps, and the result is
            projected onto the ball. ``None`` (default): minimise the norm until the query budget is spent.
        norm: 'l2' or 'linf'.
        max_queries: model queries per image, everything included (exact upper bound).
        steps: optional cap on the number of iterations (``None``: until ``max_queries``).
        init_num_evals: gradient-estimation queries at iteration 1; iteration t uses init * sqrt(t).
        max_num_evals: cap on the gradient-estimation queries of one iteration.
        gamma: binary-search threshold factor (theta = gamma / d^(3/2) for L2, gamma / d^2 for Linf).
        init_trials: uniform-noise draws per image to find an adversarial starting point.
        query_batch_size: largest number of inputs passed to the model in one call (bounds memory; 128 is
            fastest for small CNNs on a CPU — raise it on a GPU).
    """

    norms = ("l2", "linf")
    needs_gradients = False
    minimum_norm = True

    eps: float | None = None
    norm: str = "l2"
    max_queries: int = 5000
    steps: int | None = None
    init_num_evals: int = 100
    max_num_evals: int = 10_000
    gamma: float = 1.0
    init_trials: int = 100
    query_batch_size: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        self._positive("max_queries", self.max_queries, integer=True)
        if self.steps is not None:
            self._positive("steps", self.steps, integer=True)
        self._positive("init_num_evals", self.init_num_evals, integer=True)
        self._positive("max_num_evals", self.max_num_evals, integer=True)
        self._positive("gamma", self.gamma)
        self._positive("init_trials", self.init_trials, integer=True)
        self._positive("query_batch_size", self.query_batch_size, integer=True)
        if self.max_num_evals < self.init_num_evals:
            raise UsageError(f"max_num_evals ({self.max_num_evals}) must be >= init_num_evals ({self.init_num_evals})")
        self.max_queries = int(self.max_queries)
        self.steps = None if self.steps is None else int(self.steps)
        self.init_num_evals = int(self.init_num_evals)
        self.max_num_evals = int(self.max_num_evals)
        self.gamma = float(self.gamma)
        self.init_trials = int(self.init_trials)
        self.query_batch_size = int(self.query_batch_size)

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
            rv = rv / _bc(rv.flatten(1).norm(dim=1), rv)
            base, dl = cur[own], _bc(delta[own], rv)
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
        model, x, threat, generator = batch.model, batch.x, batch.threat, batch.generator
        n, d = x.shape[0], x[0].numel()
        lo, hi = model.bounds
        span = hi - lo
        theta = self._theta(d)
        oracle = DecisionOracle(model, batch.y, batch.targets, self.max_queries, self.query_batch_size)
        # queries one iteration keeps back for the step search and the binary search after it
        bs_steps = math.ceil(math.log2(1 / theta)) + (0 if self.norm == "l2" else 1)
        reserve = 2 + bs_steps

        noise, found = noise_init(oracle, x, self.init_trials, generator)
        out = x.clone()
        best_dist = torch.full((n,), float("inf"), dtype=x.dtype, device=x.device)
        init_dist = torch.full_like(best_dist, float("nan"))
        cur = x.clone()
        idx = torch.nonzero(found).flatten()
        if idx.numel():
            if self.norm == "l2":
                cur[idx], _ = boundary_search(oracle, x[idx], noise[idx], idx, "l2", theta, span)
            else:  # the reference: blend to a threshold of 1e-3, then search the Linf box radius
                blend, _ = boundary_search(oracle, x[idx], noise[idx], idx, "l2", 1e-3, span)
                cur[idx], _ = boundary_search(oracle, x[idx], blend, idx, "linf", theta, span)
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
            p = (xc[ok] + _bc(xi[ok], xc) * update[ok]).clamp(lo, hi)
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
        adv = oracle((xc[todo] + _bc(xi[todo], xc) * update[todo]).clamp(*bounds), idx[todo])
        stepped[todo[adv]] = True
        xi[todo[~adv]] /= 2
    return stepped
