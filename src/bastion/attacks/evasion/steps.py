"""Norm geometry shared by the gradient attacks: random starts and steepest-ascent directions."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ascent_direction", "random_start"]


def _view(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def random_start(x: Tensor, norm: str, eps: float, generator: torch.Generator) -> Tensor:
    """A random point of the eps-ball around ``x`` (uniform in the box for linf; uniform radius
    along a uniform direction for l2; Laplace direction scaled to a uniform radius for l1)."""
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x + (2 * u - 1) * eps
    if norm == "l2":
        d = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    else:
        e = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype).clamp_min(1e-12)
        s = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) < 0.5
        d = torch.where(s, -e.log(), e.log())
    n = d.reshape(d.shape[0], -1).norm(p=2 if norm == "l2" else 1, dim=1).clamp_min(1e-12)
    r = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype) * eps
    return x + d * _view(r / n, x)


def ascent_direction(
    g: Tensor,
    norm: str,
    *,
    x: Tensor | None = None,
    bounds: tuple[float, float] | None = None,
    l1_sparsity: float = 0.95,
) -> Tensor:
    """Steepest-ascent direction of unit norm for gradient ``g``.

    linf: sign(g). l2: g / ||g||_2. l1: sparse L1 descent (Tramèr & Boneh 2019): the coordinates
    with |g| in the top (1 - l1_sparsity) fraction, signed, normalised to unit L1 norm; coordinates
    already at a bound in the ascent direction are excluded so the step is not lost to clipping.
    """
    if norm == "linf":
        return g.sign()
    flat = g.reshape(g.shape[0], -1)
    if norm == "l2":
        return g / _view(flat.norm(p=2, dim=1).clamp_min(1e-12), g)
    a = flat.abs()
    if x is not None and bounds is not None:
        xf = x.reshape(x.shape[0], -1)
        blocked = ((xf <= bounds[0]) & (flat < 0)) | ((xf >= bounds[1]) & (flat > 0))
        a = a.masked_fill(blocked, 0.0)
    k = max(1, round((1 - l1_sparsity) * flat.shape[1]))
    thresh = a.topk(k, dim=1).values[:, -1:]
    e = torch.where((a >= thresh) & (a > 0), flat.sign(), torch.zeros_like(flat))
    e = e / e.abs().sum(dim=1, keepdim=True).clamp_min(1.0)
    return e.reshape(g.shape)
