"""The statistics behind randomized smoothing (Cohen, Rosenfeld & Kolter 2019, "Certified Adversarial
Robustness via Randomized Smoothing", Theorem 1 and Proposition 2): pure functions, no state.

- :func:`clopper_pearson_lower`: a one-sided (1 - alpha) lower confidence bound on a binomial proportion
  from k successes in n trials (Clopper & Pearson 1934) — Cohen's ``lower_conf_bound``, which calls
  ``statsmodels``' ``proportion_confint(k, n, alpha=2 * alpha, method="beta")[0]``.
- :func:`certified_radius`: the L2 radius ``sigma * Phi^-1(p_lower)`` within which the smoothed
  classifier's prediction cannot change when the top class has probability at least ``p_lower``.
- :func:`binomial_pvalue`: the two-sided exact binomial test of ``count1`` against ``count2`` at
  p = 1/2 — what Cohen's PREDICT abstains on.

Every function is vectorised: it takes Python numbers, numpy arrays or torch tensors (broadcast
against each other) and returns a float for scalar inputs, a float64 numpy array for arrays and a
float64 tensor (on the input's device) for tensors.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from ...errors import UsageError

__all__ = ["binomial_pvalue", "certified_radius", "clopper_pearson_lower"]

Values = TypeVar("Values", float, np.ndarray, Tensor)


def _as_array(*values: Any) -> tuple[list[np.ndarray], Any]:
    """numpy float64 views of ``values`` and a function restoring the type of the first tensor/array seen."""
    device = None
    kind = "scalar"
    arrays = []
    for v in values:
        if isinstance(v, Tensor):
            if kind != "tensor":
                device = v.device
            kind = "tensor"
            arrays.append(v.detach().to("cpu", torch.float64).numpy())
        else:
            if isinstance(v, np.ndarray) and kind == "scalar":
                kind = "array"
            arrays.append(np.asarray(v, dtype=np.float64))

    def restore(out: np.ndarray) -> Any:
        if kind == "tensor":
            return torch.as_tensor(out, dtype=torch.float64, device=device)
        if kind == "array":
            return np.asarray(out, dtype=np.float64)
        return float(out)

    return arrays, restore


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < float(alpha) < 1.0:
        raise UsageError(f"alpha must be a number strictly between 0 and 1 (e.g. 0.001), got {alpha!r}")
    return float(alpha)


def clopper_pearson_lower(k: Values | int, n: Values | int, alpha: float) -> Values:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on p from ``k`` successes in ``n`` trials.

    The ``alpha`` quantile of Beta(k, n - k + 1), and 0 when k = 0: with probability at least
    1 - alpha over the draw of k ~ Binomial(n, p), the bound is <= p. Equal to the lower end of the
    exact two-sided interval at confidence 1 - 2 * alpha (Cohen et al.'s ``lower_conf_bound``).

    >>> round(clopper_pearson_lower(990, 1000, 0.001), 6)
    0.976036
    >>> clopper_pearson_lower(0, 10, 0.05)
    0.0
    >>> clopper_pearson_lower(np.array([50, 100]), 100, 0.001).round(4).tolist()
    [0.3448, 0.9333]
    >>> from scipy.stats import binomtest
    >>> lo = binomtest(70, 100).proportion_ci(confidence_level=1 - 2 * 0.001, method="exact").low
    >>> bool(abs(clopper_pearson_lower(70, 100, 0.001) - lo) < 1e-12)
    True
    """
    a = _check_alpha(alpha)
    (kk, nn), restore = _as_array(k, n)
    if np.any(nn < 1) or np.any(nn != np.round(nn)):
        raise UsageError("n (the number of trials) must be a whole number >= 1")
    if np.any(kk < 0) or np.any(kk > nn) or np.any(kk != np.round(kk)):
        raise UsageError("k (the number of successes) must be a whole number with 0 <= k <= n")
    kk, nn = np.broadcast_arrays(kk, nn)
    with np.errstate(invalid="ignore"):
        low = stats.beta.ppf(a, np.maximum(kk, 1), nn - kk + 1)
    return restore(np.where(kk == 0, 0.0, low))


def certified_radius(p_lower: Values | float, sigma: float) -> Values:
    """The certified L2 radius ``sigma * Phi^-1(p_lower)`` (Cohen et al. 2019, Theorem 1 with p_B = 1 - p_A).

    If the smoothed classifier's top class has probability at least ``p_lower`` >= 1/2 at x, its
    prediction is the same at every x + delta with ||delta||_2 < radius. A negative value
    (``p_lower`` < 1/2) certifies nothing: CERTIFY abstains there (see
    :meth:`~bastion.defenses.certification.SmoothedClassifier.certify`, which reports radius 0).

    >>> certified_radius(0.5, 0.25)
    0.0
    >>> round(certified_radius(0.99, 0.5), 6)
    1.163174
    >>> certified_radius(0.3, 1.0) < 0
    True
    >>> certified_radius(torch.tensor([0.5, 0.8413447460685429]), 1.0).round(decimals=6).tolist()
    [0.0, 1.0]
    """
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not np.isfinite(sigma) or sigma <= 0:
        raise UsageError(f"sigma must be a finite number > 0, got {sigma!r}")
    (p,), restore = _as_array(p_lower)
    if np.any((p < 0) | (p > 1)) or np.any(np.isnan(p)):
        raise UsageError("p_lower must be a probability in [0, 1]")
    return restore(float(sigma) * stats.norm.ppf(p))


def binomial_pvalue(count1: Values | int, count2: Values | int) -> Values:
    """Two-sided exact binomial test p-value of ``count1`` successes in ``count1 + count2`` trials at p = 1/2.

    Equal to ``scipy.stats.binomtest(count1, count1 + count2, 0.5).pvalue`` (for p = 1/2 the
    distribution is symmetric, so it is ``min(1, 2 * P[X <= min(count1, count2)])``); 1.0 when both
    counts are 0. Cohen's PREDICT returns the top class only when this is <= alpha.

    >>> from scipy.stats import binomtest
    >>> bool(abs(binomial_pvalue(60, 40) - binomtest(60, 100, 0.5).pvalue) < 1e-12)
    True
    >>> binomial_pvalue(np.array([5, 50]), np.array([5, 0])).tolist()
    [1.0, 1.7763568394002505e-15]
    """
    (c1, c2), restore = _as_array(count1, count2)
    if np.any(c1 < 0) or np.any(c2 < 0):
        raise UsageError("counts must be >= 0")
    c1, c2 = np.broadcast_arrays(c1, c2)
    total = c1 + c2
    p = np.minimum(1.0, 2.0 * stats.binom.cdf(np.minimum(c1, c2), total, 0.5))
    return restore(np.where(total == 0, 1.0, p))
