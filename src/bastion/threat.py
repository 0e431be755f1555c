"""The threat model: which perturbations an attacker may make, as one frozen value.

``ThreatModel(norm, eps, bounds)`` is passed explicitly everywhere. Projection onto the
intersection of the eps-ball and the input box is done here, once, for every attack
(Foolbox's ``FixedEpsilonAttack`` discipline): attacks may overshoot, the library never does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from .errors import UsageError

__all__ = ["NORMS", "ThreatModel", "perturbation_norm", "project", "project_l1_ball"]

NORMS = ("linf", "l2", "l1")
_ALIASES = {"inf": "linf", "linf": "linf", "l_inf": "linf", "l2": "l2", "2": "l2", "l1": "l1", "1": "l1"}


def canonical_norm(norm: str) -> str:
    """Return the canonical name of ``norm`` ('linf', 'l2', 'l1') or raise a clear ValueError."""
    key = str(norm).strip().lower()
    if key not in _ALIASES:
        raise UsageError(f"unknown norm {norm!r}: choose one of {', '.join(NORMS)}")
    return _ALIASES[key]


@dataclass(frozen=True)
class ThreatModel:
    """An attacker's budget.

    Args:
        norm: 'linf', 'l2' or 'l1' — the norm the perturbation is measured in.
        eps: the largest allowed perturbation norm, in input space (normalisation lives inside
            the model). ``None`` means unbounded (minimum-norm attacks such as C&W or DeepFool).
        bounds: (low, high) of valid inputs; every adversarial input stays inside.
    """

    norm: str = "linf"
    eps: float | None = 0.3
    bounds: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", canonical_norm(self.norm))
        if self.eps is not None:
            eps = float(self.eps)
            if not math.isfinite(eps) or eps < 0:
                raise UsageError(f"eps must be a finite number >= 0, got {self.eps!r}")
            object.__setattr__(self, "eps", eps)
        lo, hi = (float(b) for b in self.bounds)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise UsageError(f"bounds must be two finite numbers (low, high) with low < high, got {self.bounds!r}")
        object.__setattr__(self, "bounds", (lo, hi))

    @property
    def radius(self) -> float:
        """``eps`` for an attack with a fixed budget; a minimum-norm threat model (eps None) has none."""
        if self.eps is None:
            raise UsageError("this attack needs a perturbation budget: give the threat model an eps")
        return self.eps

    def project(self, x: Tensor, x_adv: Tensor) -> Tensor:
        """Project ``x_adv`` onto the eps-ball around ``x`` intersected with the bounds."""
        return project(x, x_adv, self.norm, self.eps, self.bounds)

    def norms(self, x: Tensor, x_adv: Tensor) -> Tensor:
        """Per-sample perturbation norm of ``x_adv - x`` in this threat model's norm."""
        return perturbation_norm(x_adv - x, self.norm)


def perturbation_norm(delta: Tensor, norm: str) -> Tensor:
    """Per-sample norm of a batch of perturbations ``delta`` (shape (N, ...)) -> shape (N,)."""
    flat = delta.reshape(delta.shape[0], -1)
    norm = canonical_norm(norm)
    if norm == "linf":
        return flat.abs().amax(dim=1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    if norm == "l2":
        return cast(Tensor, flat.norm(p=2, dim=1))  # torch types Tensor.norm as Any
    return flat.abs().sum(dim=1)


def project_l1_ball(delta: Tensor, eps: float) -> Tensor:
    """Euclidean projection of each row of ``delta`` (N, D) onto the L1 ball of radius eps.

    Duchi et al. 2008, "Efficient projections onto the l1-ball", sort-based O(D log D).
    """
    abs_d = delta.abs()
    inside = abs_d.sum(dim=1) <= eps
    if bool(inside.all()):
        return delta
    mu, _ = torch.sort(abs_d, dim=1, descending=True)
    cumsum = mu.cumsum(dim=1)
    arange = torch.arange(1, delta.shape[1] + 1, device=delta.device, dtype=delta.dtype)
    cond = mu - (cumsum - eps) / arange > 0
    rho = cond.to(torch.int64).cumsum(dim=1).argmax(dim=1, keepdim=True)  # last index where cond holds
    theta = (cumsum.gather(1, rho) - eps) / (rho + 1).to(delta.dtype)
    projected = delta.sign() * (abs_d - theta).clamp_min(0)
    return torch.where(inside[:, None], delta, projected)


def _project_ball(delta: Tensor, norm: str, eps: float) -> Tensor:
    flat = delta.reshape(delta.shape[0], -1)
    if norm == "linf":
        flat = flat.clamp(-eps, eps)
    elif norm == "l2":
        n = flat.norm(p=2, dim=1, keepdim=True)
        factor = torch.where(n > eps, eps / n.clamp_min(1e-30), torch.ones_like(n))
        flat = flat * factor
    else:
        flat = project_l1_ball(flat, eps)
    return flat.reshape(delta.shape)


def project(x: Tensor, x_adv: Tensor, norm: str, eps: float | None, bounds: tuple[float, float]) -> Tensor:
    """Project ``x_adv`` onto {z : ||z - x|| <= eps, low <= z <= high}, exactly.

    Clamping to the box after projecting onto the ball never increases any |delta_i| (x is inside
    the box), so the result lies in the intersection. Float rounding of ``x + delta`` can overshoot
    the ball by a few ulps; a final check shrinks such rows so that the stored ``x_adv`` satisfies
    the budget as measured on ``x_adv - x`` itself.
    """
    norm = canonical_norm(norm)
    lo, hi = bounds
    if x_adv.shape[0] == 0:
        return x_adv
    if eps is None:
        return x_adv.clamp(lo, hi)
    delta = _project_ball(x_adv - x, norm, eps)
    out = (x + delta).clamp(lo, hi)
    if norm != "linf":
        # x + delta rounds each coordinate by up to half an ulp, which adds up over many coordinates:
        # shrink offending rows below eps by a slack of the size of that rounding, doubling until it holds
        ulp = torch.finfo(x.dtype).eps * max(1.0, abs(lo), abs(hi))
        for k in range(8):
            n = perturbation_norm(out - x, norm)
            over = n > eps
            if not bool(over.any()):
                break
            nnz = ((out - x).reshape(x.shape[0], -1) != 0).sum(dim=1).to(x.dtype)
            slack = ulp * (nnz if norm == "l1" else nnz.sqrt()) * 2.0**k
            target = (eps - slack).clamp_min(0.0)
            shrink = torch.where(over, target / n.clamp_min(1e-30), torch.ones_like(n))
            out = (x + (out - x) * shrink.view(-1, *([1] * (x.dim() - 1)))).clamp(lo, hi)
    return out
