"""Input-distribution drift: two-sample tests of windows of recent traffic against a clean reference.

:class:`DriftMonitor` collects the feature rows of served inputs (for images the model's penultimate
features, for tabular data the raw rows) into non-overlapping ("tumbling") windows of ``window`` rows and
tests each full window against a reference sample of clean data, the null hypothesis being that the window
and the reference come from the same distribution. Each window is compared with ``m = min(max_reference, N)``
reference rows drawn afresh (without replacement, seeded) from the ``N`` reference rows.

- ``test="mmd"`` — the kernel two-sample test of Gretton, Borgwardt, Rasch, Schölkopf & Smola 2012 ("A Kernel
  Two-Sample Test", JMLR 13), with the Gaussian kernel ``k(a, b) = exp(-||a - b||^2 / (2 sigma^2))`` and the
  unbiased estimator of the squared maximum mean discrepancy between reference X (m rows) and window Y (n rows)

      MMD_u^2 = sum_{i != j} k(x_i, x_j) / (m (m-1)) + sum_{i != j} k(y_i, y_j) / (n (n-1))
                - 2 sum_{i, j} k(x_i, y_j) / (m n).

  ``sigma`` is the median pairwise distance of (at most 1,000 rows of) the reference, computed once (the
  median heuristic). The p-value is that of a permutation test: the pooled sample is split at random
  ``permutations`` times into m + n rows and ``p = (1 + #{permuted MMD_u^2 >= observed}) / (1 + permutations)``,
  which is valid (P[p <= alpha] <= alpha under the null) for any number of permutations. The pooled kernel
  matrix K is computed once per window; a split with window-indicator vector b needs only ``b^T K b`` and
  ``b^T K 1`` (the other block sums follow from the total), evaluated for batches of splits as one matrix
  product.
- ``test="ks"`` — per-feature two-sample Kolmogorov-Smirnov tests (``scipy.stats.ks_2samp``) with the p-values
  adjusted for testing d features at once: Benjamini & Hochberg 1995 ("Controlling the False Discovery Rate",
  JRSS B 57), which controls the false-discovery rate (and, when no feature has drifted, the probability of
  any alarm) at ``alpha`` for independent or positively dependent tests, or Holm 1979 (family-wise error
  rate, any dependence). The window's p-value is the smallest adjusted p-value, its statistic the largest
  KS distance, and ``features_drifting`` the number of features with adjusted p <= alpha.

A window drifts when its p-value is <= ``alpha``: for clean traffic each window raises a false alarm with
probability at most ``alpha`` (so about ``k * alpha`` false alarms are expected over k windows).

Shapes: reference (N, d); observed features (n, d), float, any device (tested in float64 on the CPU).
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from ..errors import UsageError

__all__ = [
    "CORRECTIONS",
    "HISTORY_CAP",
    "TESTS",
    "DriftMonitor",
    "adjust_pvalues",
    "gaussian_kernel",
    "ks_drift_test",
    "median_bandwidth",
    "mmd2_split_statistics",
    "mmd2_unbiased",
    "mmd_permutation_test",
]

TESTS = ("mmd", "ks")
CORRECTIONS = ("bh", "holm")
HISTORY_CAP = 10_000
_MEDIAN_ROWS = 1000
_PERM_BATCH = 128


def _rows(x: Any, name: str, d: int | None = None) -> Tensor:
    """``x`` as a finite (n, d) float64 CPU tensor, or a UsageError."""
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(np.asarray(x, dtype=np.float64))
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{name} must be a 2-D float tensor (n, d), got {type(x).__name__}") from exc
    if x.dim() != 2:
        raise UsageError(f"{name} must be a 2-D tensor (n rows, d features), got shape {tuple(x.shape)}")
    if x.dtype == torch.bool or x.is_complex():
        raise UsageError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if d is not None and x.shape[1] != d:
        raise UsageError(
            f"{name} must have {d} features per row (the reference's dimension), got shape {tuple(x.shape)}"
        )
    x = x.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).any(dim=1).sum())
        raise UsageError(f"{name} contains NaN or infinite values (in {bad} of {x.shape[0]} rows)")
    return x


def _sq_dists(a: Tensor, b: Tensor) -> Tensor:
    """Squared Euclidean distances (len(a), len(b)) in float64."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    d2 = a.square().sum(1)[:, None] + b.square().sum(1)[None, :] - 2.0 * (a @ b.T)
    return d2.clamp_min_(0.0)


def gaussian_kernel(a: Tensor, b: Tensor, bandwidth: float) -> Tensor:
    """``exp(-||a_i - b_j||^2 / (2 bandwidth^2))`` for rows of ``a`` (n, d) and ``b`` (m, d): (n, m), float64."""
    return torch.exp(_sq_dists(a, b) / (-2.0 * float(bandwidth) ** 2))


def median_bandwidth(x: Tensor, *, max_rows: int = _MEDIAN_ROWS, generator: torch.Generator | None = None) -> float:
    """The median heuristic: the median distance between distinct rows of ``x`` (a random ``max_rows`` of them).

    Falls back to the mean of the non-zero distances when more than half are zero; a UsageError when all are.
    """
    x = _rows(x, "x")
    if x.shape[0] > max_rows:
        x = x[torch.randperm(x.shape[0], generator=generator)[:max_rows]]
    n = x.shape[0]
    if n < 2:
        raise UsageError("the median heuristic needs at least 2 rows")
    iu = torch.triu_indices(n, n, offset=1)
    dist = _sq_dists(x, x)[iu[0], iu[1]].sqrt()
    med = float(dist.median())
    if med > 0:
        return med
    nonzero = dist[dist > 0]
    if nonzero.numel() == 0:
        raise UsageError(
            "all reference rows are identical: a kernel two-sample test has nothing to compare "
            "(pass a reference sample of real, varied clean data)"
        )
    return float(nonzero.mean())


def mmd2_unbiased(x: Tensor, y: Tensor, bandwidth: float) -> float:
    """The unbiased MMD^2 estimate (Gretton et al. 2012, Eq. 3) between rows of ``x`` (m, d) and ``y`` (n, d)."""
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise UsageError(f"MMD_u^2 needs at least 2 rows in each sample, got {m} and {n}")
    kxx, kyy, kxy = gaussian_kernel(x, x, bandwidth), gaussian_kernel(y, y, bandwidth), gaussian_kernel(x, y, bandwidth)
    return float(
        (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
        + (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
        - 2.0 * kxy.sum() / (m * n)
    )


def mmd2_split_statistics(kernel: Tensor, y_index: Tensor) -> Tensor:
    """MMD_u^2 for many splits of one pooled sample, from its kernel matrix: (B,), float64.

    ``kernel`` (N, N) is the kernel matrix of the pooled rows; ``y_index`` (B, n) holds, for each split, the
    n distinct positions forming Y (the other N - n rows form X). Each split costs one row of a (B, N) x (N, N)
    matrix product: with ``b`` the 0/1 indicator of Y, ``S_yy = b^T K b``, ``S_xy = b^T K 1 - S_yy`` and
    ``S_xx = 1^T K 1 - 2 b^T K 1 + S_yy``, less the diagonal terms.
    """
    kernel = kernel.to(torch.float64)
    total_n = kernel.shape[0]
    y_index = torch.as_tensor(y_index, dtype=torch.long)
    if y_index.dim() == 1:
        y_index = y_index[None]
    n = y_index.shape[1]
    m = total_n - n
    if m < 2 or n < 2:
        raise UsageError(f"MMD_u^2 needs at least 2 rows in each sample, got {m} and {n}")
    rowsum = kernel.sum(dim=1)
    total = float(rowsum.sum())
    diag = kernel.diagonal()
    diag_total = float(diag.sum())
    out = []
    for start in range(0, y_index.shape[0], _PERM_BATCH):
        idx = y_index[start : start + _PERM_BATCH]
        b = torch.zeros(idx.shape[0], total_n, dtype=torch.float64).scatter_(1, idx, 1.0)
        s_yy = torch.gather(b @ kernel, 1, idx).sum(dim=1)
        t = b @ rowsum
        d_y = b @ diag
        s_xy = t - s_yy
        s_xx = total - 2.0 * t + s_yy
        out.append((s_xx - (diag_total - d_y)) / (m * (m - 1)) + (s_yy - d_y) / (n * (n - 1)) - 2.0 * s_xy / (m * n))
    return torch.cat(out)


def mmd_permutation_test(
    x: Tensor, y: Tensor, bandwidth: float, *, permutations: int = 500, generator: torch.Generator | None = None
) -> tuple[float, float]:
    """Gaussian-kernel MMD_u^2 of ``x`` (m, d) against ``y`` (n, d) and its permutation p-value: (statistic, p).

    ``p = (1 + #{permutation statistics >= observed}) / (1 + permutations)``.
    """
    pooled = torch.cat([x.to(torch.float64), y.to(torch.float64)])
    kernel = gaussian_kernel(pooled, pooled, bandwidth)
    total_n, n = pooled.shape[0], y.shape[0]
    observed = float(mmd2_split_statistics(kernel, torch.arange(total_n - n, total_n)[None])[0])
    y_index = torch.stack([torch.randperm(total_n, generator=generator)[:n] for _ in range(permutations)])
    null = mmd2_split_statistics(kernel, y_index)
    # a relative tolerance so that a permutation reproducing the observed split counts despite rounding
    count = int((null >= observed - 1e-12 * max(1.0, abs(observed))).sum())
    return observed, (count + 1) / (permutations + 1)


def adjust_pvalues(p: Any, method: str = "bh") -> np.ndarray:
    """Multiple-testing adjusted p-values: ``"bh"`` (Benjamini & Hochberg 1995) or ``"holm"`` (Holm 1979).

    The same values as ``statsmodels.stats.multitest.multipletests(p, method="fdr_bh" | "holm")[1]``:
    BH ``p_(i) -> min_{j >= i} min(1, k p_(j) / j)``, Holm ``p_(i) -> max_{j <= i} min(1, (k - j + 1) p_(j))``
    for the k p-values sorted ascending; rejecting adjusted p <= alpha is the corresponding procedure.
    """
    if method not in CORRECTIONS:
        raise UsageError(f"unknown multiple-testing correction {method!r}: choose one of {', '.join(CORRECTIONS)}")
    p = np.asarray(p, dtype=np.float64).ravel()
    k = p.size
    if k == 0:
        return p
    order = np.argsort(p, kind="stable")
    ranks = np.arange(1, k + 1)
    if method == "bh":
        adj = np.minimum.accumulate((p[order] * k / ranks)[::-1])[::-1]
    else:
        adj = np.maximum.accumulate(p[order] * (k - ranks + 1))
    out = np.empty(k)
    out[order] = np.minimum(adj, 1.0)
    return out


def ks_drift_test(reference: Tensor, window: Tensor, alpha: float, *, correction: str = "bh") -> dict[str, Any]:
    """Per-feature KS tests of ``window`` (n, d) against ``reference`` (m, d), adjusted across the d features.

    Returns ``{"statistic": max KS distance, "p_value": min adjusted p, "features_drifting": #adjusted p <= alpha,
    "p_values": raw per-feature p (d,), "adjusted": adjusted p (d,)}``.
    """
    ref = reference.detach().to("cpu", torch.float64).numpy()
    win = window.detach().to("cpu", torch.float64).numpy()
    res = stats.ks_2samp(ref, win, axis=0)
    d_stat = np.atleast_1d(np.asarray(res.statistic, dtype=np.float64))
    p = np.atleast_1d(np.asarray(res.pvalue, dtype=np.float64))
    adjusted = adjust_pvalues(p, correction)
    return {
        "statistic": float(d_stat.max()),
        "p_value": float(adjusted.min()),
        "features_drifting": int((adjusted <= alpha).sum()),
        "p_values": p,
        "adjusted": adjusted,
    }


def _int_at_least(value: Any, low: int, name: str, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise UsageError(f"{name} must be a whole number >= {low} ({hint}), got {value!r}")
    return int(value)


class DriftMonitor:
    """Tests tumbling windows of served features against a clean reference (see the module docstring).

    Args:
        reference: (N, d) finite features of clean reference data, N >= ``window``.
        test: ``"mmd"`` (kernel two-sample test, any features) or ``"ks"`` (per-feature KS, tabular data).
        window: rows per tested window (>= 10).
        alpha: per-window false-alarm level: a window drifts when its p-value is <= alpha.
        permutations: random splits for the MMD p-value (>= 19 and >= 1/alpha - 1, so that p <= alpha is possible).
        max_reference: reference rows drawn (without replacement) for each window's test (>= ``window``).
        seed: seeds every random draw (reference subsamples, permutations, the bandwidth's subsample).
        correction: ``"bh"`` (Benjamini-Hochberg) or ``"holm"``, for ``test="ks"``.

    Attributes: ``bandwidth`` (the Gaussian kernel's sigma, ``None`` for ks), ``dim`` (d), ``reference`` (N, d).
    """

    def __init__(
        self,
        reference: Tensor,
        *,
        test: str = "mmd",
        window: int = 200,
        alpha: float = 0.01,
        permutations: int = 500,
        max_reference: int = 1000,
        seed: int = 0,
        correction: str = "bh",
    ) -> None:
        if test not in TESTS:
            raise UsageError(
                f"unknown drift test {test!r}: choose 'mmd' (kernel MMD with a permutation p-value) "
                "or 'ks' (per-feature Kolmogorov-Smirnov, for tabular data)"
            )
        if correction not in CORRECTIONS:
            raise UsageError(f"unknown multiple-testing correction {correction!r}: choose 'bh' or 'holm'")
        self.window = _int_at_least(window, 10, "window", "rows per tested window, e.g. 200")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < float(alpha) < 1.0:
            raise UsageError(f"alpha must be a number strictly between 0 and 1 (e.g. 0.01), got {alpha!r}")
        self.alpha = float(alpha)
        self.permutations = _int_at_least(permutations, 19, "permutations", "e.g. 500")
        if test == "mmd" and self.alpha * (self.permutations + 1) < 1.0 - 1e-9:
            need = math.ceil(1.0 / self.alpha - 1e-9) - 1
            raise UsageError(
                f"with {self.permutations} permutations the smallest p-value is "
                f"1/{self.permutations + 1} > alpha={self.alpha}, so no drift could ever be raised: "
                f"use at least {need} permutations"
            )
        self.max_reference = _int_at_least(
            max_reference, self.window, "max_reference", "reference rows per test, at least one window"
        )
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise UsageError(f"seed must be an integer, got {seed!r}")
        self.seed = int(seed)
        self.test = test
        self.correction = correction
        ref = _rows(reference, "reference")
        if ref.shape[0] < self.window or ref.shape[1] < 1:
            raise UsageError(
                f"reference must have at least window={self.window} rows and 1 feature, got shape {tuple(ref.shape)}"
            )
        self.reference = ref
        self.dim = ref.shape[1]
        self._generator = torch.Generator().manual_seed(self.seed)
        self.bandwidth: float | None = None
        if test == "mmd":
            self.bandwidth = median_bandwidth(
                ref, max_rows=min(self.max_reference, _MEDIAN_ROWS), generator=torch.Generator().manual_seed(self.seed)
            )
        self._pending: list[Tensor] = []
        self._pending_rows = 0
        self._history: deque[dict] = deque(maxlen=HISTORY_CAP)
        self._next_index = 0

    @property
    def history(self) -> list[dict]:
        """Every completed window's result (the last :data:`HISTORY_CAP`), oldest first."""
        return list(self._history)

    @property
    def pending(self) -> int:
        """Rows collected towards the next window."""
        return self._pending_rows

    def reset(self) -> None:
        """Drop the partial window and the history; the window index and the random draws start over."""
        self._pending, self._pending_rows = [], 0
        self._history.clear()
        self._next_index = 0
        self._generator = torch.Generator().manual_seed(self.seed)

    def observe(self, features: Tensor) -> list[dict]:
        """Add rows ``features`` (n, d); test every window they complete and return those results, oldest first."""
        rows = _rows(features, "features", self.dim)
        if rows.shape[0] == 0:
            return []
        self._pending.append(rows)
        self._pending_rows += rows.shape[0]
        results = []
        if self._pending_rows >= self.window:
            buffered = torch.cat(self._pending)
            full = buffered.shape[0] // self.window * self.window
            for start in range(0, full, self.window):
                results.append(self._test_window(buffered[start : start + self.window]))
            rest = buffered[full:]
            self._pending = [rest] if rest.shape[0] else []
            self._pending_rows = rest.shape[0]
        return results

    def _reference_sample(self) -> Tensor:
        n_ref = self.reference.shape[0]
        if n_ref <= self.max_reference:
            return self.reference
        return self.reference[torch.randperm(n_ref, generator=self._generator)[: self.max_reference]]

    def _test_window(self, rows: Tensor) -> dict:
        ref = self._reference_sample()
        extra: dict[str, Any] = {}
        if self.test == "mmd":
            assert self.bandwidth is not None
            stat, p = mmd_permutation_test(
                ref, rows, self.bandwidth, permutations=self.permutations, generator=self._generator
            )
        else:
            ks = ks_drift_test(ref, rows, self.alpha, correction=self.correction)
            stat, p = ks["statistic"], ks["p_value"]
            extra["features_drifting"] = ks["features_drifting"]
        result = {
            "window": self._next_index,
            "test": self.test,
            "statistic": float(stat),
            "p_value": float(p),
            "drift": bool(p <= self.alpha),
            "n": int(rows.shape[0]),
            "alpha": self.alpha,
            "ts": time.time(),
            **extra,
        }
        self._next_index += 1
        self._history.append(result)
        return result
