"""Empirical lower bounds on the differential-privacy epsilon of a training algorithm, from an auditor's guesses.

A training algorithm is (epsilon, delta)-DP if no test can tell apart its outputs on neighbouring data sets too
well. An auditor that *does* tell them apart (guesses which canaries were trained on better than chance) therefore
proves that the algorithm is *not* epsilon'-DP for any epsilon' below some value. That value is what this module
reports: ``epsilon_lower_bound`` is a number such that, with probability at least ``confidence`` over the
randomness of training and of canary inclusion, the algorithm's true epsilon (at the given ``delta``) is at least
that large. It is a statement about the algorithm, not about one model; a bound of 0 means "nothing proven", never
"private". A bound far below the epsilon a DP-SGD accountant claims is expected (the audit is weak), a bound above
it means the implementation or the accounting is wrong.

Two methods:

- **One run** — Steinke, Nasr & Jagielski 2023, "Privacy Auditing with One (1) Training Run" (NeurIPS 2023).
  ``m`` canaries, each included in the training set independently with probability 1/2; one model is trained; the
  auditor guesses "in" or "out" for ``r`` of them (abstaining on the rest) and is right ``v`` times. Their
  Theorem bounds how likely ``v`` correct guesses are under (epsilon, delta)-DP; :func:`one_run_p_value` is their
  reference code (vectorised), :func:`one_run_epsilon` the largest epsilon it rejects, :func:`one_run_audit` the
  whole audit from per-canary scores.
- **Several runs** — Jagielski, Ullman & Oprea 2020, "Auditing Differentially Private Machine Learning: How Private
  is Private SGD?" (NeurIPS 2020). A distinguishing test's false-positive and false-negative rates satisfy
  ``FPR + e^eps FNR >= 1 - delta`` (and symmetrically) under (epsilon, delta)-DP; Clopper-Pearson upper bounds on
  the two rates turn observed errors into a bound (:func:`clopper_pearson_epsilon`, :func:`multi_run_audit`).

Pure numpy/scipy; every function checks its inputs and raises :class:`~bastion.errors.UsageError` with one line.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import special, stats

from ...errors import UsageError

__all__ = [
    "clopper_pearson_epsilon",
    "default_guesses",
    "multi_run_audit",
    "one_run_audit",
    "one_run_epsilon",
    "one_run_p_value",
]

ONE_RUN_METHOD = "one-run (Steinke, Nasr & Jagielski 2023)"
MULTI_RUN_METHOD = "Clopper-Pearson (Jagielski, Ullman & Oprea 2020)"
_SEARCH_STEPS = 40  # bisection steps after bracketing: the bracket [0, k] shrinks to k / 2**40


# --- input checks ---------------------------------------------------------------------------------------------


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise UsageError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _check_counts(m: Any, r: Any, v: Any) -> tuple[int, int, int]:
    m, r, v = _as_int("m", m), _as_int("r", r), _as_int("v", v)
    if not 0 <= v <= r <= m:
        raise UsageError(f"need 0 <= v <= r <= m (correct <= guesses <= canaries), got m={m}, r={r}, v={v}")
    return m, r, v


def _check_delta(delta: float) -> float:
    if not 0.0 <= delta < 1.0:
        raise UsageError(f"delta must be in [0, 1), got {delta!r}")
    return float(delta)


def _check_confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise UsageError(f"confidence must be in (0, 1), got {confidence!r}")
    return float(confidence)


def _check_scores(scores: Any, included: Any, what: str = "") -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    s, inc = np.asarray(scores, dtype=np.float64), np.asarray(included)
    if s.ndim != 1 or inc.ndim != 1:
        raise UsageError(f"scores and included{what} must be 1-D arrays, got shapes {s.shape} and {inc.shape}")
    if s.shape != inc.shape:
        raise UsageError(f"scores and included{what} must have the same length, got {s.size} and {inc.size}")
    if not np.all(np.isfinite(s)):
        raise UsageError(f"scores{what} must be finite (no nan or inf)")
    if inc.dtype != np.bool_ and not np.all((inc == 0) | (inc == 1)):
        raise UsageError(f"included{what} must be booleans (or 0/1)")
    return s, inc.astype(bool)


# --- one run (Steinke, Nasr & Jagielski 2023) -------------------------------------------------------------------


def _p_value_function(m: int, r: int, v: int, delta: float) -> Callable[[float], float]:
    """The reference ``p_value_DP_audit(m, r, v, eps, delta)`` as a function of eps, with the eps-free parts cached.

    beta = P[Binomial(r, q) >= v], s_i = P[v - i <= Binomial(r, q) < v] (a cumulative sum of pmfs),
    alpha = max(0, max_i s_i / i), p = min(1, beta + 2 m delta alpha), with q = 1 / (1 + e^-eps) the accuracy of
    eps-DP randomized response. The pmfs are computed in log space (log-binomial coefficients cached).
    """
    if v == 0:  # beta = P[Binomial >= 0] = 1
        return lambda eps: 1.0
    i = np.arange(1, v + 1, dtype=np.float64)
    k = v - i  # v-1, v-2, ..., 0
    log_choose = special.gammaln(r + 1) - special.gammaln(k + 1) - special.gammaln(r - k + 1)

    def p_value(eps: float) -> float:
        q = 1.0 / (1.0 + math.exp(-eps))
        log_q, log_1mq = -math.log1p(math.exp(-eps)), -eps - math.log1p(math.exp(-eps))
        beta = float(special.bdtrc(v - 1, r, q))
        s = np.cumsum(np.exp(log_choose + k * log_q + (r - k) * log_1mq))
        alpha = max(0.0, float(np.max(s / i)))
        return min(beta + alpha * delta * 2 * m, 1.0)

    return p_value


def one_run_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Probability of at least ``v`` correct out of ``r`` guesses on ``m`` canaries if training is (epsilon, delta)-DP.

    Steinke, Nasr & Jagielski 2023 (their reference ``p_value_DP_audit``). A value below 1 - confidence rejects
    the hypothesis "the algorithm is (epsilon, delta)-DP". Non-decreasing in epsilon for delta = 0.
    """
    m, r, v = _check_counts(m, r, v)
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise UsageError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
    return _p_value_function(m, r, v, _check_delta(delta))(float(epsilon))


def one_run_epsilon(m: int, r: int, v: int, *, delta: float, confidence: float = 0.95) -> float:
    """Largest epsilon that ``v`` correct out of ``r`` guesses on ``m`` canaries rejects at ``confidence``.

    Their ``get_eps_audit``: grow an upper end 1, 2, 3, ... until the p-value reaches 1 - confidence, then bisect
    (40 steps) keeping the lower end rejected. 0 when there is no guess or no correct guess.
    """
    m, r, v = _check_counts(m, r, v)
    delta, p = _check_delta(delta), 1.0 - _check_confidence(confidence)
    if v == 0 or r == 0:
        return 0.0
    p_value = _p_value_function(m, r, v, delta)
    eps_min, eps_max = 0.0, 1.0
    while p_value(eps_max) < p:  # ends: p_value -> 1 as eps grows (q reaches 1.0 in floating point near eps = 37)
        eps_max += 1.0
    for _ in range(_SEARCH_STEPS):
        eps = (eps_min + eps_max) / 2
        if p_value(eps) < p:
            eps_min = eps
        else:
            eps_max = eps
    return eps_min


def default_guesses(m: int) -> list[int]:
    """The numbers of guesses :func:`one_run_audit` tries by default: 10, 20, 50, 100, 200, 500, ... below m, and m."""
    grid, base = [], 10
    while base < m:
        grid += [g for g in (base, 2 * base, 5 * base) if g < m]
        base *= 10
    return [*grid, m]


def one_run_audit(
    scores: Any, included: Any, *, delta: float, confidence: float = 0.95, guesses: Sequence[int] | None = None
) -> dict[str, Any]:
    """One-run audit (Steinke, Nasr & Jagielski 2023) from per-canary scores of one trained model.

    ``scores`` (m,): higher = more likely trained on; ``included`` (m,) bool: the truth. The canaries must have
    been included independently with probability 1/2 each, and the scores must not depend on ``included`` other
    than through the trained model. For each number of guesses r (``guesses``; default :func:`default_guesses`:
    10, 20, 50, 100, 200, 500, 1000, ... below m, plus m itself), the auditor guesses "in" for the ceil(r/2)
    highest scores and "out" for the floor(r/2) lowest, abstains on the rest, and counts its correct guesses v.
    Ties are broken by position: canaries are ranked by a stable sort, so among equal scores a later canary
    ranks higher. Because several r are tried and the best is reported, each is tested at failure probability
    (1 - confidence) / (number of r) (Bonferroni), so the reported bound holds at ``confidence`` overall.

    Returns a JSON-ready dict: ``epsilon_lower_bound`` (the best over r), ``confidence``, ``delta``, ``method``,
    ``m``, ``guesses`` / ``correct`` / ``accuracy`` (r, v and v / r of the best), ``per_guesses``
    (a list of {r, v, epsilon}).
    """
    s, inc = _check_scores(scores, included)
    delta, confidence = _check_delta(delta), _check_confidence(confidence)
    m = s.size
    if m == 0:
        raise UsageError("one_run_audit needs at least one canary")
    grid = default_guesses(m) if guesses is None else sorted({_as_int("guesses", g) for g in guesses})
    if not grid or grid[0] < 1 or grid[-1] > m:
        raise UsageError(f"guesses must be numbers between 1 and m = {m}, got {list(guesses or [])}")
    per_r_confidence = 1.0 - (1.0 - confidence) / len(grid)
    ranked = inc[np.argsort(s, kind="stable")]  # inclusion truth, lowest score first
    in_from_top = np.concatenate([[0], np.cumsum(ranked[::-1])])  # included among the k highest scores
    out_from_bottom = np.concatenate([[0], np.cumsum(~ranked)])  # excluded among the k lowest scores
    per_guesses = []
    for r in grid:
        v = int(in_from_top[r - r // 2] + out_from_bottom[r // 2])
        eps = one_run_epsilon(m, r, v, delta=delta, confidence=per_r_confidence)
        per_guesses.append({"r": r, "v": v, "epsilon": eps})
    best = max(per_guesses, key=lambda row: row["epsilon"])  # first of the best on ties
    return {
        "epsilon_lower_bound": best["epsilon"],
        "confidence": confidence,
        "delta": delta,
        "method": ONE_RUN_METHOD,
        "m": m,
        "guesses": best["r"],
        "correct": best["v"],
        "accuracy": best["v"] / best["r"],
        "per_guesses": per_guesses,
    }


# --- several runs (Jagielski, Ullman & Oprea 2020) ------------------------------------------------------------


def _cp_upper(k: npt.NDArray[np.int64], n: npt.NDArray[np.int64], alpha: float) -> npt.NDArray[np.float64]:
    """One-sided Clopper-Pearson upper bound, at level 1 - alpha, on a rate with k events in n trials (1 if k = n)."""
    bound = stats.beta.ppf(1.0 - alpha, k + 1, np.maximum(n - k, 1))
    return np.where(k >= n, 1.0, bound).astype(np.float64)


def _cp_epsilon(
    fp: npt.NDArray[np.int64],
    neg: npt.NDArray[np.int64],
    fn: npt.NDArray[np.int64],
    pos: npt.NDArray[np.int64],
    delta: float,
    confidence: float,
) -> npt.NDArray[np.float64]:
    alpha = (1.0 - confidence) / 2  # the failure probability, split evenly between the FPR and the FNR bound
    fpr, fnr = _cp_upper(fp, neg, alpha), _cp_upper(fn, pos, alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(1 - delta - fpr > 0, np.log((1 - delta - fpr) / fnr), 0.0)
        b = np.where(1 - delta - fnr > 0, np.log((1 - delta - fnr) / fpr), 0.0)
    return np.maximum(np.maximum(a, b), 0.0)


def clopper_pearson_epsilon(
    false_positives: int,
    negatives: int,
    false_negatives: int,
    positives: int,
    *,
    delta: float,
    confidence: float = 0.95,
) -> float:
    """Epsilon lower bound from a distinguishing test's errors over independent trials (Jagielski et al. 2020).

    ``false_positives`` of ``negatives`` trials (canary absent, test said "in") and ``false_negatives`` of
    ``positives`` trials (canary present, test said "out"). FPR and FNR are bounded above by one-sided
    Clopper-Pearson bounds, each at failure probability (1 - confidence) / 2, so both hold together at
    ``confidence``; then eps >= max(log((1 - delta - FPR_ub) / FNR_ub), log((1 - delta - FNR_ub) / FPR_ub)),
    and 0 where that is undefined or negative.
    """
    fp, neg = _as_int("false_positives", false_positives), _as_int("negatives", negatives)
    fn, pos = _as_int("false_negatives", false_negatives), _as_int("positives", positives)
    if not (0 <= fp <= neg and 0 <= fn <= pos):
        raise UsageError(
            f"need 0 <= false_positives <= negatives and 0 <= false_negatives <= positives, got {fp}/{neg}, {fn}/{pos}"
        )
    delta, confidence = _check_delta(delta), _check_confidence(confidence)
    fp_, neg_, fn_, pos_ = (np.array([x], dtype=np.int64) for x in (fp, neg, fn, pos))
    return float(_cp_epsilon(fp_, neg_, fn_, pos_, delta, confidence)[0])


def multi_run_audit(
    scores: Sequence[Any], included: Sequence[Any], *, delta: float, confidence: float = 0.95
) -> dict[str, Any]:
    """Several-run audit (Jagielski, Ullman & Oprea 2020): a threshold test on canary scores, Clopper-Pearson bounds.

    ``scores[j]`` and ``included[j]`` are the canary scores (higher = more likely trained on) and inclusion truth
    of training run j; the test says "in" when score >= threshold. To keep the bound honest the threshold is chosen
    on the first run only (the one maximising this bound computed on that run; ties go to the lower total error
    rate, then the higher threshold) and errors are counted on the remaining runs, pooled — so at least 2 runs are
    needed. Pooling the canaries of one run treats them as independent trials, a heuristic (canaries trained
    together are not independent) that the one-run method (:func:`one_run_audit`) does not need.

    Returns a JSON-ready dict: ``epsilon_lower_bound``, ``confidence``, ``delta``, ``method``, ``runs``,
    ``threshold``, ``false_positives``, ``negatives``, ``false_negatives``, ``positives``.
    """
    delta, confidence = _check_delta(delta), _check_confidence(confidence)
    if len(scores) != len(included):
        raise UsageError(
            f"scores and included must hold the same number of runs, got {len(scores)} and {len(included)}"
        )
    if len(scores) < 2:
        raise UsageError(
            f"multi_run_audit needs at least 2 training runs (the first picks the threshold), got {len(scores)}"
        )
    runs = [_check_scores(s, inc, f" of run {j}") for j, (s, inc) in enumerate(zip(scores, included))]
    s0, inc0 = runs[0]
    if s0.size == 0:
        raise UsageError("the first run needs at least one canary to pick the threshold")
    pos_s, neg_s = np.sort(s0[inc0]), np.sort(s0[~inc0])
    candidates = np.unique(s0)
    fn = np.searchsorted(pos_s, candidates, side="left").astype(np.int64)
    fp = (neg_s.size - np.searchsorted(neg_s, candidates, side="left")).astype(np.int64)
    n_pos, n_neg = np.full_like(fn, pos_s.size), np.full_like(fp, neg_s.size)
    eps0 = _cp_epsilon(fp, n_neg, fn, n_pos, delta, confidence)
    errors = fp / max(neg_s.size, 1) + fn / max(pos_s.size, 1)
    threshold = float(candidates[np.lexsort((-errors, eps0))[-1]])
    counts = {"false_positives": 0, "negatives": 0, "false_negatives": 0, "positives": 0}
    for s, inc in runs[1:]:
        said_in = s >= threshold
        counts["false_positives"] += int(np.sum(said_in & ~inc))
        counts["negatives"] += int(np.sum(~inc))
        counts["false_negatives"] += int(np.sum(~said_in & inc))
        counts["positives"] += int(np.sum(inc))
    eps = clopper_pearson_epsilon(**counts, delta=delta, confidence=confidence)
    return {
        "epsilon_lower_bound": eps,
        "confidence": confidence,
        "delta": delta,
        "method": MULTI_RUN_METHOD,
        "runs": len(runs),
        "threshold": threshold,
        **counts,
    }
