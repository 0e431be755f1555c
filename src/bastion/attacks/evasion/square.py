"""Square attack (Andriushchenko, Croce, Flammarion & Hein 2020, "Square Attack: a query-efficient
black-box adversarial attack via random search"), Linf and L2. Query-based: never uses gradients.

Threat model: Linf or L2 ball of radius eps intersected with the input bounds. Inputs
(N, C, H, W), (N, H, W) or (N, D) (Linf only: a vector is a 1 x D "image" and the squares are
segments). Labels (N,); optional targets (N,).

Random search on the margin loss of the logits (log-probabilities for models that return
probabilities), as in the reference implementation (github.com/max-andr/square-attack):

- Linf: start from vertical stripes (one random sign +-eps per channel and column); each iteration
  every image gets one random s x s square (its own position) set to a random +-eps per channel,
  resampled until it changes the current best input, and keeps it if the margin loss improves.
- L2: start from a grid of pseudo-Gaussian "bumps" of random sign scaled to norm eps; each iteration
  moves the mass of a second window into a new bump on a first window (one position per iteration
  for the whole batch, as in the reference), keeping the total norm at eps.
- The square side follows the reference's piecewise-constant schedule of the fraction ``p`` of
  pixels changed (``p_init`` halved at iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of
  10,000), rescaled to ``max_queries`` like the reference rescales it to its iteration count.

Query accounting (exact): every model call is on the whole active batch — one call for the
initialisation, then one per iteration on the images not yet fooled. ``max_queries`` (the
reference's default of 10,000 per image) includes the initial query, so no image costs more than
``max_queries`` queries. ``extra["queries"]`` holds the queries each image used until success (or
the total it used), ``extra["query_success"]`` whether the search fooled it; their sum over the
images equals the attack's queries (``AttackResult.queries``). Images that are already
misclassified cost one query. Untargeted and targeted (pass ``targets``; the reference uses CE for
targeted runs, bastion keeps the margin loss, which stops exactly when the target is reached).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ...errors import UsageError
from ..base import Attack, AttackBatch, positive, register
from .losses import as_logits, margin_loss

__all__ = ["Square", "p_selection"]

_SCHEDULE = (
    (10, 1),
    (50, 2),
    (200, 4),
    (500, 8),
    (1000, 16),
    (2000, 32),
    (4000, 64),
    (6000, 128),
    (8000, 256),
    (10000, 512),
)


def p_selection(p_init: float, it: int, n_iters: int) -> float:
    """The reference's fraction of pixels changed at iteration ``it`` of ``n_iters`` (rescaled to 10,000)."""
    k = int(it / n_iters * 10000)
    if k <= 10:
        return p_init
    for upper, div in _SCHEDULE[1:]:
        if k <= upper:
            return p_init / div
    return p_init


def _as_images(x: Tensor) -> Tensor:
    """View (N, *shape) as (N, C, H, W): (H, W) -> (1, H, W), (D,) -> (1, 1, D), extra leading dims -> C."""
    if x.dim() == 2:
        return x.reshape(x.shape[0], 1, 1, x.shape[1])
    if x.dim() == 3:
        return x.unsqueeze(1)
    return x.reshape(x.shape[0], -1, x.shape[-2], x.shape[-1])


def _pseudo_gaussian_rectangle(h: int, w: int, device: torch.device) -> Tensor:
    delta = torch.zeros(h, w, device=device)
    ch, cw = h // 2 + 1, w // 2 + 1
    r0, c0 = ch - 1, cw - 1
    for k in range(max(ch, cw)):
        delta[max(r0, 0) : min(r0 + 2 * k + 1, h), max(c0, 0) : min(c0 + 2 * k + 1, w)] += 1.0 / (k + 1) ** 2
        r0 -= 1
        c0 -= 1
    return delta / delta.norm().clamp_min(1e-12)


def _meta_pseudo_gaussian(s: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """Two pseudo-Gaussian half-bumps of opposite sign, randomly transposed (reference, n_subsquares=2)."""
    delta = torch.zeros(s, s, device=device)
    if s // 2:
        delta[: s // 2] = _pseudo_gaussian_rectangle(s // 2, s, device)
    delta[s // 2 :] = -_pseudo_gaussian_rectangle(s - s // 2, s, device)
    delta = delta / delta.norm().clamp_min(1e-12)
    if float(torch.rand(1, generator=generator, device=device)) > 0.5:
        delta = delta.T
    return delta


def _window_mask(n: int, h: int, w: int, sh: int, sw: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """(n, 1, h, w) bool masks of one random sh x sw window per image (top-left in [0, h-sh) x [0, w-sw))."""
    top = torch.randint(0, max(h - sh, 1), (n, 1), generator=generator, device=device)
    left = torch.randint(0, max(w - sw, 1), (n, 1), generator=generator, device=device)
    rows, cols = torch.arange(h, device=device), torch.arange(w, device=device)
    rmask = (rows >= top) & (rows < top + sh)
    cmask = (cols >= left) & (cols < left + sw)
    return (rmask[:, :, None] & cmask[:, None, :]).unsqueeze(1)


def _rand_sign(shape: tuple[int, ...], generator: torch.Generator, device: torch.device, dtype: torch.dtype) -> Tensor:
    return (2 * torch.randint(0, 2, shape, generator=generator, device=device) - 1).to(dtype)


@register("square")
@dataclass(kw_only=True, eq=False, repr=False)
class Square(Attack):
    """Square attack, Linf or L2, score-based (no gradients).

    Args:
        eps: radius of the ball. norm: 'linf' or 'l2'.
        max_queries: queries per image, the initial one included (the reference's 10,000).
        p_init: initial fraction of pixels changed per iteration (0.8, the paper's MNIST value and
            ART's / torchattacks' default; the reference uses 0.05 on ImageNet).
    """

    norms = ("linf", "l2")
    needs_gradients = False

    max_queries: int = positive(10000, integer=True)
    p_init: float = 0.8

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.p_init, (int, float)) and 0 < self.p_init <= 1):
            raise UsageError(f"p_init must be a fraction in (0, 1], got {self.p_init!r}")
        self.p_init = float(self.p_init)

    def _attack(self, batch: AttackBatch) -> Tensor:
        model, x, threat, generator = batch.model, batch.x, batch.threat, batch.generator
        xi = _as_images(x)
        n, _c, h, w = xi.shape
        if threat.norm == "l2" and min(h, w) < 2:
            raise UsageError(
                f"the L2 Square attack needs image inputs (C, H, W) with H, W >= 2, got {tuple(x.shape[1:])}: "
                "use norm='linf' or the 'simba' attack"
            )
        eps = threat.radius
        lo, hi = threat.bounds
        init = self._init_linf if threat.norm == "linf" else self._init_l2
        step = self._step_linf if threat.norm == "linf" else self._step_l2
        with torch.no_grad():
            x_best = init(xi, eps, generator).clamp(lo, hi)
            z = as_logits(model.logits(x_best.reshape(x.shape)), model.output)
            loss_best = margin_loss(z, batch.y, batch.targets)
            done = loss_best > 0
            queries = torch.ones(n, dtype=torch.long, device=x.device)
            for it in range(self.max_queries - 1):
                active = torch.nonzero(~done).flatten()
                if active.numel() == 0:
                    break
                xa, xb = xi[active], x_best[active]
                p = p_selection(self.p_init, it, self.max_queries)
                x_new = step(xa, xb, eps, p, (lo, hi), generator)
                rows = batch.rows(active)
                z = as_logits(model.logits(x_new.reshape(-1, *x.shape[1:])), model.output)
                loss = margin_loss(z, rows.y, rows.targets)
                queries[active] += 1
                improved = loss > loss_best[active]
                idx = active[improved]
                x_best[idx] = x_new[improved]
                loss_best[idx] = loss[improved]
                done[idx] = loss[improved] > 0
        batch.budget.add_per_sample("queries", queries)
        batch.budget.add_per_sample("query_success", done.clone())
        return x_best.reshape(x.shape)

    # -- Linf -------------------------------------------------------------------------------
    @staticmethod
    def _init_linf(x: Tensor, eps: float, generator: torch.Generator) -> Tensor:
        n, c, _h, w = x.shape
        stripes = eps * _rand_sign((n, c, 1, w), generator, x.device, x.dtype)  # vertical stripes
        return x + stripes

    @staticmethod
    def _step_linf(
        x: Tensor, x_best: Tensor, eps: float, p: float, bounds: tuple[float, float], generator: torch.Generator
    ) -> Tensor:
        n, c, h, w = x.shape
        lo, hi = bounds
        if h == 1:  # vectors: segments covering a fraction p of the features
            sh, sw = 1, min(max(round(p * w), 1), max(w - 1, 1))
        else:
            s = min(max(round(math.sqrt(p * h * w)), 1), min(h, w) - 1)
            sh = sw = s
        mask = _window_mask(n, h, w, sh, sw, generator, x.device)
        delta = x_best - x
        todo = torch.ones(n, dtype=torch.bool, device=x.device)
        for _ in range(32):  # resample the square's signs until it changes the current best input
            signs = eps * _rand_sign((n, c, 1, 1), generator, x.device, x.dtype)
            cand = torch.where(mask & todo.view(-1, 1, 1, 1), signs, delta)
            changed = (((x + cand).clamp(lo, hi) - x_best).abs() > 1e-7) & mask
            delta = cand
            todo = todo & ~changed.flatten(1).any(dim=1)
            if not bool(todo.any()):
                break
        return (x + delta).clamp(lo, hi)

    # -- L2 ---------------------------------------------------------------------------------
    @staticmethod
    def _init_l2(x: Tensor, eps: float, generator: torch.Generator) -> Tensor:
        n, c, h, w = x.shape
        s = max(h // 5, 1)
        delta = torch.zeros_like(x)
        start = max((h - s * 5) // 2, 0)
        top = start
        for _ in range(h // s):
            left = start
            for _ in range(w // s):
                if top + s <= h and left + s <= w:
                    bump = _meta_pseudo_gaussian(s, generator, x.device).to(x.dtype)
                    delta[:, :, top : top + s, left : left + s] += bump * _rand_sign(
                        (n, c, 1, 1), generator, x.device, x.dtype
                    )
                left += s
            top += s
        norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return x + delta / norm * eps

    @staticmethod
    def _step_l2(
        x: Tensor, x_best: Tensor, eps: float, p: float, bounds: tuple[float, float], generator: torch.Generator
    ) -> Tensor:
        n, c, h, w = x.shape
        lo, hi = bounds
        s = max(round(math.sqrt(p * h * w)), 3)
        s = min(s + 1 if s % 2 == 0 else s, min(h, w) - 1)
        dev = x.device

        def corner() -> tuple[int, int]:
            t = torch.randint(0, max(h - s, 1), (1,), generator=generator, device=dev)
            l_ = torch.randint(0, max(w - s, 1), (1,), generator=generator, device=dev)
            return int(t), int(l_)

        (t1, l1), (t2, l2) = corner(), corner()
        w1, w2 = (slice(t1, t1 + s), slice(l1, l1 + s)), (slice(t2, t2 + s), slice(l2, l2 + s))
        delta = x_best - x
        mask2 = torch.zeros(h, w, dtype=torch.bool, device=dev)
        mask2[w1] = True
        mask2[w2] = True
        norm_w1 = delta[:, :, w1[0], w1[1]].norm(dim=(2, 3), keepdim=True)
        norm_img = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        norm_windows = (delta * mask2).norm(dim=(2, 3), keepdim=True)
        new = _meta_pseudo_gaussian(s, generator, dev).to(x.dtype) * _rand_sign((n, c, 1, 1), generator, dev, x.dtype)
        new = new + delta[:, :, w1[0], w1[1]] / (1e-10 + norm_w1)
        budget_sq = (eps**2 - norm_img**2).clamp_min(0) / c + norm_windows**2
        new = new / new.norm(dim=(2, 3), keepdim=True).clamp_min(1e-12) * budget_sq.sqrt()
        delta[:, :, w2[0], w2[1]] = 0.0
        delta[:, :, w1[0], w1[1]] = new
        norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return (x + delta / norm * eps).clamp(lo, hi)
