"""The metrics every attack, defence, probe and benchmark reports, as pure functions.

Each takes torch tensors or numpy arrays (or lists) of per-record values and returns a Python float
(or a tuple of floats); none touches a model, so they are the same whether the predictions came from
a local network, an ONNX file or a remote endpoint. An empty input gives ``nan`` (there is no rate of
nothing), never a ``ZeroDivisionError``.

- :func:`accuracy`, :func:`robust_accuracy` — share of predictions equal to the labels (an abstention,
  label -1, is never correct);
- :func:`attack_success_rate` — share of the inputs the model got right that the attack flipped;
- :func:`backdoor_success_rate` — share of triggered inputs classified as the backdoor's target;
- :func:`agreement` (alias :func:`fidelity`) — share of inputs on which two models agree (extraction);
- :func:`wilson_interval` — the Wilson score interval of a binomial proportion (scipy's normal quantile);
- :func:`roc_auc`, :func:`tpr_at_fpr`, :func:`roc_curve` — membership-inference and detection quality from
  per-record scores (higher = "member" / "attack"), with ties handled like scikit-learn;
- :func:`expected_calibration_error` — how far confidence is from accuracy, bin by bin (Guo et al. 2017);
- :func:`detection_scores` — how well a set of flagged records (a sanitiser's removals) matches the true ones:
  precision, recall, F1 and the share of clean records flagged.

    >>> accuracy([1, 2, 3, 4], [1, 2, 0, 4])
    0.75
    >>> round(roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), 4)
    0.75
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from .errors import UsageError

__all__ = [
    "accuracy",
    "agreement",
    "attack_success_rate",
    "backdoor_success_rate",
    "detection_scores",
    "expected_calibration_error",
    "fidelity",
    "robust_accuracy",
    "roc_auc",
    "roc_curve",
    "tpr_at_fpr",
    "wilson_interval",
]

ArrayLike = Tensor | np.ndarray | Sequence[Any]


def _array(values: ArrayLike, name: str) -> np.ndarray:
    """A 1-D numpy array of ``values`` (torch tensors are detached and moved to the CPU)."""
    if isinstance(values, Tensor):
        arr = values.detach().cpu().numpy()
    else:
        arr = np.asarray(values)
    if arr.ndim != 1:
        raise UsageError(f"{name} must be one value per record (a 1-D array), got shape {tuple(arr.shape)}")
    return arr


def _pair(a: ArrayLike, b: ArrayLike, name_a: str, name_b: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = _array(a, name_a), _array(b, name_b)
    if x.shape != y.shape:
        raise UsageError(
            f"{name_a} and {name_b} must have one value per record each, got {x.shape[0]} and {y.shape[0]}"
        )
    return x, y


def accuracy(pred: ArrayLike, y: ArrayLike) -> float:
    """Share of predictions ``pred`` (N,) equal to the labels ``y`` (N,); ``nan`` when N = 0."""
    p, t = _pair(pred, y, "pred", "y")
    return float(np.mean(p == t)) if p.size else math.nan


def robust_accuracy(pred_adv: ArrayLike, y: ArrayLike) -> float:
    """Share of adversarial inputs still classified as their label: :func:`accuracy` on ``pred_adv``."""
    return accuracy(pred_adv, y)


def attack_success_rate(success: ArrayLike, clean_correct: ArrayLike | None = None) -> float:
    """Share of successful attacks, over the inputs the model got right when ``clean_correct`` is given.

    ``success`` (N,) bool: the attack met its goal on the input; ``clean_correct`` (N,) bool: the model was
    right on the clean input (an input it already gets wrong is no success of the attacker's).
    ``nan`` when no input counts.
    """
    s = _array(success, "success").astype(bool)
    if clean_correct is None:
        return float(s.mean()) if s.size else math.nan
    s, c = _pair(s, _array(clean_correct, "clean_correct").astype(bool), "success", "clean_correct")
    n = int(c.sum())
    return float((s & c).sum()) / n if n else math.nan


def backdoor_success_rate(pred_triggered: ArrayLike, target: ArrayLike) -> float:
    """Share of triggered inputs the model classifies as the backdoor's target (Gu et al. 2017's attack success
    rate): ``pred_triggered`` (N,) the predictions on triggered inputs, ``target`` (N,) the label each should get.

    Pass only inputs whose true class is not the target (all-to-one), so that the rate counts flips the
    backdoor caused; :meth:`bastion.attacks.poisoning.PoisonedData.triggered_test` selects them. ``nan`` when
    N = 0.
    """
    return accuracy(pred_triggered, target)


def agreement(pred_a: ArrayLike, pred_b: ArrayLike) -> float:
    """Share of inputs on which two models predict the same label; ``nan`` when there are none."""
    a, b = _pair(pred_a, pred_b, "pred_a", "pred_b")
    return float(np.mean(a == b)) if a.size else math.nan


fidelity = agreement
"""Fidelity of a stolen copy to its victim (Jagielski et al. 2020): :func:`agreement` on held-out inputs."""


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``k / n`` at ``confidence`` (two-sided).

    Better than the normal interval near 0 and 1 and for small n (Brown, Cai & DasGupta 2001).
    ``(nan, nan)`` when ``n == 0``.

        >>> [round(v, 4) for v in wilson_interval(8, 10)]
        [0.4902, 0.9433]
    """
    from scipy.stats import norm

    if isinstance(k, bool) or isinstance(n, bool) or int(k) != k or int(n) != n or not 0 <= k <= n:
        raise UsageError(f"wilson_interval needs whole counts 0 <= k <= n, got k={k!r}, n={n!r}")
    if not 0 < confidence < 1:
        raise UsageError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    if n == 0:
        return (math.nan, math.nan)
    z = float(norm.ppf(0.5 + confidence / 2))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at k = 0 (k = n) the lower (upper) end is exactly 0 (1); rounding would leave it a few ulps off
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return (lo, hi)


def _scored(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y, s = _pair(labels, scores, "labels", "scores")
    s = s.astype(np.float64)
    if not np.isfinite(s).all():
        raise UsageError("scores contain NaN or infinite values")
    if y.dtype == bool:
        y = y.astype(np.int64)
    if not np.isin(y, (0, 1)).all():
        raise UsageError("labels must be 0 (negative: non-member, clean) or 1 (positive: member, attack)")
    return y.astype(bool), s


def roc_curve(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) of the rule "positive when score >= threshold", one point per distinct score.

    Starts at (0, 0) with threshold +inf, ends at (1, 1); tied scores move together (as in scikit-learn's
    ``roc_curve`` with ``drop_intermediate=False``). Needs both classes present.
    """
    y, s = _scored(labels, scores)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise UsageError("a ROC curve needs both positive (1) and negative (0) labels")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]  # the last index of each run of tied scores
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    fpr = np.r_[0.0, fps / n_neg]
    tpr = np.r_[0.0, tps / n_pos]
    return fpr, tpr, np.r_[np.inf, s[last]]


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random negative,
    ties counting one half (the Mann-Whitney U statistic over n_pos * n_neg)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.trapezoid(tpr, fpr))


def tpr_at_fpr(labels: ArrayLike, scores: ArrayLike, fpr: float) -> float:
    """The largest true-positive rate of a threshold rule whose false-positive rate is at most ``fpr``.

    Carlini et al. 2022 ("Membership Inference Attacks From First Principles") report membership
    inference at fpr = 0.1% or 0.001%: an attack that is right about a few records with certainty is a
    breach that the AUC hides. Only thresholds on the ROC curve count (no interpolation between them), so
    the value is achievable, not optimistic. With N negatives, an fpr below 1/N admits only the rules that
    flag no negative at all.
    """
    if isinstance(fpr, bool) or not isinstance(fpr, (int, float)) or not 0 <= fpr <= 1:
        raise UsageError(f"fpr must be a number in [0, 1], got {fpr!r}")
    fprs, tprs, _ = roc_curve(labels, scores)
    return float(tprs[fprs <= fpr + 1e-12].max())


def detection_scores(removed: ArrayLike, poisoned: ArrayLike) -> dict[str, float]:
    """Precision, recall and F1 of the records a sanitiser ``removed`` (N,) bool against the truly ``poisoned``
    (N,) bool, as scikit-learn's ``precision_recall_fscore_support(poisoned, removed, average="binary",
    zero_division=nan)``; ``removed_clean_rate``, the share of clean records removed; ``n_removed``.

    An undefined rate is ``nan``: precision when nothing was removed, recall when nothing was poisoned, the
    removed clean rate when nothing was clean, F1 = 2 TP / (2 TP + FP + FN) when both sets are empty.

    >>> detection_scores([True, True, True, False, False], [True, True, False, True, False])
    {'precision': 0.6666666666666666, 'recall': 0.6666666666666666, 'f1': 0.6666666666666666, \
'removed_clean_rate': 0.5, 'n_removed': 3}
    """
    r, p = _pair(removed, poisoned, "removed", "poisoned")
    if r.dtype != bool or p.dtype != bool:
        if not (np.isin(r, (0, 1)).all() and np.isin(p, (0, 1)).all()):
            raise UsageError("removed and poisoned must be one boolean (or 0/1) per record")
        r, p = r.astype(bool), p.astype(bool)
    tp, fp, fn = int((r & p).sum()), int((r & ~p).sum()), int((~r & p).sum())
    n_clean = int((~p).sum())

    def ratio(a: int, b: int) -> float:
        return a / b if b else math.nan

    return {
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "removed_clean_rate": ratio(fp, n_clean),
        "n_removed": tp + fp,
    }


def expected_calibration_error(confidence: ArrayLike, correct: ArrayLike, n_bins: int = 15) -> float:
    """Expected calibration error (Guo, Pleiss, Sun & Weinberger 2017, "On Calibration of Modern Neural
    Networks"): the records' ``confidence`` (N,) in [0, 1] (the probability given to the predicted class) put in
    ``n_bins`` equal-width bins, and the mean over records of |accuracy of the bin - mean confidence of the bin|,
    ``correct`` (N,) bool saying whether each prediction was right. ``nan`` when N = 0.

    >>> expected_calibration_error([0.9, 0.9, 0.6, 0.6], [True, False, True, True], n_bins=10)
    0.4
    """
    c, ok = _pair(confidence, correct, "confidence", "correct")
    c = c.astype(np.float64)
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise UsageError(f"n_bins must be a whole number >= 1, got {n_bins!r}")
    if not (np.isfinite(c).all() and (c >= 0).all() and (c <= 1 + 1e-9).all()):
        raise UsageError("confidence must hold probabilities in [0, 1]")
    if not c.size:
        return math.nan
    ok = ok.astype(np.float64)
    bins = np.minimum((c * n_bins).astype(np.int64), n_bins - 1)  # [0, 1/n), ..., [(n-1)/n, 1]
    gap = 0.0
    for b in np.unique(bins):
        sel = bins == b
        gap += abs(float(ok[sel].mean()) - float(c[sel].mean())) * int(sel.sum())
    return gap / c.size
