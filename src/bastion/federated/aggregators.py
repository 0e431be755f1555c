"""Robust aggregation of federated model updates, as pure numpy functions.

An *update* is a flattened model delta (client weights minus the global weights); a round's updates are the rows
of a ``(n, d)`` float array. The Flower strategies that wrap these functions live elsewhere; nothing here imports
Flower or torch.

- :func:`fltrust` (Cao, Fang, Liu & Gong, "FLTrust: Byzantine-robust Federated Learning via Trust
  Bootstrapping", NDSS 2021). The server computes its own update ``g_0`` on a small clean root data set. Each
  client gets the trust score ``TS_i = ReLU(cos(g_i, g_0))``, its update is rescaled to the server update's norm,
  ``ḡ_i = (‖g_0‖ / ‖g_i‖) g_i``, and the aggregate is ``Σ TS_i ḡ_i / Σ TS_i``. A client pointing away from the
  server's direction gets trust 0 and a client that scales its update up gains nothing, so the aggregate's norm
  never exceeds ``‖g_0‖``. When every trust score is 0 (or ``g_0`` is the zero vector) the aggregate is the zero
  vector (the global model is kept). A zero-norm client update has no direction and gets trust 0.
- :func:`norm_clip` (Sun, Kairouz, Suresh & McMahan, "Can You Really Backdoor Federated Learning?", 2019):
  norm thresholding, each update scaled by ``min(1, bound / ‖g_i‖)``, then the weighted mean, then optionally
  "weak differential privacy": Gaussian noise ``N(0, sigma²)`` added to each coordinate of the aggregate.

Both refuse non-finite updates (naming the offending rows) rather than letting one NaN silently poison the
global model: the caller decides whether to drop that client.

    >>> import numpy as np
    >>> agg, trust = fltrust(np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 3.0]]), np.array([2.0, 2.0]))
    >>> trust.round(3).tolist(), agg.round(3).tolist()
    ([0.707, 0.0, 0.707], [1.414, 1.414])
    >>> norm_clip(np.array([[3.0, 4.0], [0.3, 0.4]]), bound=1.0)[1].tolist()
    [0.2, 1.0]
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import UsageError

__all__ = ["fltrust", "norm_clip", "validate_updates"]


def validate_updates(updates: object, what: str = "updates") -> np.ndarray:
    """``updates`` as a 2-D float array ``(n, d)``, or :class:`UsageError`: not 2-D, not a float array, or a row
    with NaN/inf (the error names the rows, so the client that sent them can be dropped)."""
    array = np.asarray(updates)
    if array.ndim != 2:
        raise UsageError(f"{what} must be a 2-D array (one flattened update per row), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise UsageError(f"{what} must be a float array, got dtype {array.dtype}: cast it with .astype(np.float32)")
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if bad.size:
        rows = ", ".join(str(int(i)) for i in bad[:10]) + (", ..." if bad.size > 10 else "")
        raise UsageError(f"{what} row(s) {rows} contain NaN or inf: drop or repair those clients' updates first")
    return array


def _check_vector(vector: object, d: int, what: str) -> np.ndarray:
    array = np.asarray(vector)
    if array.shape != (d,) or not np.issubdtype(array.dtype, np.floating):
        raise UsageError(
            f"{what} must be a 1-D float array of length {d} (the update size), got {array.dtype} {array.shape}"
        )
    if not np.isfinite(array).all():
        raise UsageError(f"{what} contains NaN or inf: recompute it from finite model weights")
    return array


def _number(value: object, name: str, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise UsageError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise UsageError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
    return number


def _out_dtype(*arrays: np.ndarray) -> np.dtype:
    return np.result_type(*(a.dtype for a in arrays))


def fltrust(updates: np.ndarray, server_update: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FLTrust's aggregate of the client ``updates`` ``(n, d)`` given the server's root-data update ``(d,)``.

    Returns:
        ``(aggregate, trust)``: the aggregate ``(d,)`` in the inputs' float dtype, and the trust scores ``(n,)``
        (float64, in ``[0, 1]``).
    """
    g = validate_updates(updates, "client updates")
    g0 = _check_vector(server_update, g.shape[1], "server_update")
    g64, g0_64 = g.astype(np.float64, copy=False), g0.astype(np.float64, copy=False)
    norms = np.linalg.norm(g64, axis=1)
    norm0 = float(np.linalg.norm(g0_64))
    trust = np.zeros(g.shape[0], dtype=np.float64)
    usable = norms > 0
    if norm0 > 0:
        cosine = (g64[usable] @ g0_64) / (norms[usable] * norm0)
        trust[usable] = np.clip(cosine, 0.0, 1.0)
    total = float(trust.sum())
    aggregate = np.zeros(g.shape[1], dtype=np.float64)
    if total > 0:
        # Σ TS_i (‖g_0‖/‖g_i‖) g_i / Σ TS_i as one weighted sum (rows with trust 0 get weight 0)
        coefficients = np.zeros_like(trust)
        coefficients[usable] = trust[usable] * norm0 / (norms[usable] * total)
        aggregate = coefficients @ g64
    return aggregate.astype(_out_dtype(g, g0), copy=False), trust


def norm_clip(
    updates: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    bound: float,
    sigma: float = 0.0,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Norm-bounded weighted mean of ``updates`` ``(n, d)``, plus optional Gaussian noise (Sun et al. 2019).

    Args:
        updates: one flattened client update per row (n >= 1).
        weights: per-client weights ``(n,)``, >= 0 with a positive sum (e.g. example counts); normalised to sum
            to 1. Default: equal weights.
        bound: the norm threshold ``M`` > 0; each update is scaled by ``min(1, M / ‖g_i‖)``.
        sigma: standard deviation of the noise added to each coordinate of the aggregate (>= 0; 0 = none).
        rng: the generator the noise is drawn from; required when ``sigma > 0``.

    Returns:
        ``(aggregate, scales)``: the aggregate ``(d,)`` in the updates' float dtype and the scale factor applied
        to each update ``(n,)`` (float64, 1.0 where the update was within the bound).
    """
    g = validate_updates(updates, "client updates")
    bound = _number(bound, "bound", positive=True)
    sigma = _number(sigma, "sigma", positive=False)
    if g.shape[0] == 0:
        raise UsageError("norm_clip needs at least one client update")
    if sigma > 0 and not isinstance(rng, np.random.Generator):
        raise UsageError("sigma > 0 adds noise: pass rng=np.random.default_rng(seed)")
    n = g.shape[0]
    if weights is None:
        w = np.full(n, 1.0 / n)
    else:
        w = _check_vector(np.asarray(weights, dtype=np.float64), n, "weights")
        if (w < 0).any() or w.sum() <= 0:
            raise UsageError("weights must be >= 0 with a positive sum (e.g. each client's example count)")
        w = w / w.sum()
    g64 = g.astype(np.float64, copy=False)
    norms = np.linalg.norm(g64, axis=1)
    scales = np.ones(n, dtype=np.float64)
    over = norms > bound
    scales[over] = bound / norms[over]
    aggregate = (w * scales) @ g64
    if sigma > 0:
        if rng is None:  # checked above; this narrows the type without an assert (stripped under -O)
            raise UsageError("sigma > 0 needs an rng: pass rng=np.random.default_rng(seed)")
        aggregate = aggregate + rng.normal(0.0, sigma, size=aggregate.shape)
    return aggregate.astype(g.dtype, copy=False), scales
