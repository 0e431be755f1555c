"""SimBA (Guo, Gardner, You, Wilson & Weinberger 2019, "Simple Black-box Adversarial Attacks").
Query-based: never uses gradients.

Threat model: L2. Inputs (N, *input_shape), labels (N,), optional targets (N,). Each iteration
takes the next direction ``q`` of a random orthonormal basis order (per image) and tries
``x + epsilon * q``; if the model's probability of the true class does not drop (of the target
class does not rise, targeted), it tries ``x - epsilon * q``; an improving step is kept. Because
the basis is orthonormal, the perturbation's L2 norm grows like ``epsilon * sqrt(steps taken)``.

- ``basis='pixel'``: the standard basis (one input coordinate per step).
- ``basis='dct'``: SimBA-DCT, the low-frequency orthonormal 2-D DCT basis (the lowest
  ``freq_dims`` x ``freq_dims`` frequencies of each channel; 1-D DCT for vector inputs).

When every basis direction has been tried the order is redrawn and the search goes on.

SimBA is not budgeted by a norm in the paper, so ``eps`` (the L2 radius) defaults to ``None``:
a minimum-norm-style run where only the bounds apply, and the result's ``norms`` report the size
reached. With ``eps`` set, every candidate is projected onto the L2 ball (and the bounds)
*before* it is queried, so what was queried is what is returned.

Query accounting (exact): one model call on all images for the clean scores, then per iteration
one call with ``+epsilon`` on the images not yet fooled and one with ``-epsilon`` on those whose
``+epsilon`` step did not improve. An image never uses more than ``max_queries`` queries (the
initial one included); ``extra["queries"]`` holds each image's queries until success (or in total)
and ``extra["query_success"]`` whether the search fooled it; they sum to ``AttackResult.queries``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ...errors import UsageError
from ..base import AttackBatch, MinimumNormAttack, positive, register

__all__ = ["SimBA", "dct_matrix"]


def dct_matrix(n: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Orthonormal DCT-II matrix ``D`` (n, n): coefficients ``D @ v``, inverse ``D.T @ c``."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(device=device, dtype=dtype)


def _probs(scores: Tensor, output: str) -> Tensor:
    return scores if output == "probabilities" else torch.softmax(scores, dim=1)


@register("simba")
@dataclass(kw_only=True, eq=False, repr=False)
class SimBA(MinimumNormAttack):
    """SimBA with the pixel or the low-frequency DCT basis, L2, score-based (no gradients).

    Args:
        epsilon: step along each basis direction (the paper's 0.2, for inputs in [0, 1]).
        eps: L2 radius of the threat model; ``None`` (default) bounds only by the input range.
        basis: 'pixel' or 'dct'. freq_dims: side of the low-frequency DCT block (default: a
            quarter of the image side, at least 1; the paper uses 38 of 224 on ImageNet).
        max_queries: queries per image, the initial one included.
    """

    norms = ("l2",)
    needs_gradients = False

    epsilon: float = positive(0.2)
    basis: str = "pixel"
    freq_dims: int | None = positive(None, integer=True)
    max_queries: int = positive(10000, integer=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.basis not in ("pixel", "dct"):
            raise UsageError(f"basis must be 'pixel' or 'dct', got {self.basis!r}")

    # -- the basis ------------------------------------------------------------------------
    def _basis(
        self, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
    ) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """(coordinates searched, as flat indices into a coefficient tensor of ``shape``; map to input space)."""
        if self.basis == "pixel":
            return torch.arange(math.prod(shape), device=device), lambda c: c
        spatial = shape[-2:] if len(shape) >= 2 else shape[-1:]
        mats = [dct_matrix(s, device, dtype) for s in spatial]
        f = [min(self.freq_dims or max(s // 4, 1), s) for s in spatial]
        low = torch.zeros(shape, dtype=torch.bool, device=device)
        if len(spatial) == 2:
            low[..., : f[0], : f[1]] = True

            def to_input(c: Tensor) -> Tensor:
                return mats[0].T @ c @ mats[1]
        else:
            low[..., : f[0]] = True

            def to_input(c: Tensor) -> Tensor:
                return c @ mats[0]

        return torch.nonzero(low.flatten()).flatten(), to_input

    def _attack(self, batch: AttackBatch) -> Tensor:
        model, x, y, targets, threat = batch.model, batch.x, batch.y, batch.targets, batch.threat
        n = x.shape[0]
        dev = x.device
        coords, to_input = self._basis(tuple(x.shape[1:]), dev, x.dtype)
        d = coords.numel()
        label = targets if targets is not None else y
        sign = 1.0 if targets is not None else -1.0  # maximise sign * p(label)
        coef = torch.zeros(n, math.prod(x.shape[1:]), device=dev, dtype=x.dtype)

        def candidate(idx: Tensor, c: Tensor) -> Tensor:
            return threat.project(x[idx], x[idx] + to_input(c.view(-1, *x.shape[1:])))

        def query(idx: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
            s = model.logits(candidate(idx, c))
            p = _probs(s, model.output).gather(1, label[idx, None]).squeeze(1)
            return p, batch.rows(idx).is_adversarial(s)

        with torch.no_grad():
            everyone = torch.arange(n, device=dev)
            best, done = query(everyone, coef)
            queries = torch.ones(n, dtype=torch.long, device=dev)
            order = torch.argsort(torch.rand(n, d, generator=batch.generator, device=dev), dim=1)
            step = torch.zeros(n, dtype=torch.long, device=dev)
            while True:
                active = torch.nonzero(~done & (queries < self.max_queries)).flatten()
                if active.numel() == 0:
                    break
                k = step[active] % d
                if bool((k == 0).any()) and bool((step[active] > 0).any()):  # order used up: redraw it
                    redo = active[(k == 0) & (step[active] > 0)]
                    order[redo] = torch.argsort(
                        torch.rand(redo.numel(), d, generator=batch.generator, device=dev), dim=1
                    )
                dims = coords[order[active, k]]
                step[active] += 1
                improved = torch.zeros(active.numel(), dtype=torch.bool, device=dev)
                for direction in (1.0, -1.0):
                    sel = torch.nonzero(~improved & (queries[active] < self.max_queries)).flatten()
                    if sel.numel() == 0:
                        break
                    idx = active[sel]
                    c = coef[idx].clone()
                    c[torch.arange(idx.numel(), device=dev), dims[sel]] += direction * self.epsilon
                    p, adv = query(idx, c)
                    queries[idx] += 1
                    better = sign * (p - best[idx]) > 0
                    take = idx[better]
                    coef[take] = c[better]
                    best[take] = p[better]
                    done[take] = adv[better]
                    improved[sel[better]] = True
            x_adv = candidate(everyone, coef)
        batch.budget.add_per_sample("queries", queries)
        batch.budget.add_per_sample("query_success", done.clone())
        return x_adv
