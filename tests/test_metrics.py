"""bastion.metrics against scikit-learn and scipy, on random cases and hand-computed ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm
from statsmodels.stats.proportion import proportion_confint

import bastion
from bastion import metrics
from bastion.errors import UsageError


def test_importable_after_import_bastion():
    assert bastion.metrics is metrics
    assert metrics.accuracy([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75


def test_rates_on_tensors_arrays_and_lists_agree():
    pred = torch.tensor([0, 1, 2, -1, 4])
    y = torch.tensor([0, 1, 1, 3, 4])
    for p, t in ((pred, y), (pred.numpy(), y.numpy()), (pred.tolist(), y.tolist())):
        assert metrics.accuracy(p, t) == 0.6  # the abstention (-1) is never correct
        assert metrics.robust_accuracy(p, t) == 0.6
        assert metrics.agreement(p, t) == metrics.fidelity(p, t) == 0.6


def test_attack_success_rate_counts_only_clean_correct_inputs():
    success = torch.tensor([True, True, False, True])
    clean_correct = torch.tensor([True, False, True, True])
    assert metrics.attack_success_rate(success, clean_correct) == pytest.approx(2 / 3)
    assert metrics.attack_success_rate(success) == 0.75
    assert math.isnan(metrics.attack_success_rate(success, torch.zeros(4, dtype=torch.bool)))


def test_empty_inputs_give_nan_and_mismatched_ones_an_error():
    assert math.isnan(metrics.accuracy([], []))
    assert math.isnan(metrics.agreement(torch.empty(0), torch.empty(0)))
    with pytest.raises(UsageError, match="one value per record each, got 3 and 2"):
        metrics.accuracy([1, 2, 3], [1, 2])
    with pytest.raises(UsageError, match="1-D"):
        metrics.accuracy(torch.zeros(2, 2), torch.zeros(2, 2))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 400), st.integers(1, 400), st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_wilson_interval_matches_statsmodels(k, n, confidence):
    k = min(k, n)
    lo, hi = metrics.wilson_interval(k, n, confidence)
    ref_lo, ref_hi = proportion_confint(k, n, alpha=1 - confidence, method="wilson")
    assert lo == pytest.approx(ref_lo, abs=1e-12) and hi == pytest.approx(ref_hi, abs=1e-12)
    assert 0 <= lo <= k / n <= hi <= 1


def test_wilson_interval_refuses_bad_counts():
    assert all(math.isnan(v) for v in metrics.wilson_interval(0, 0))
    for k, n in ((5, 3), (-1, 3), (1.5, 3)):
        with pytest.raises(UsageError, match="whole counts"):
            metrics.wilson_interval(k, n)


_scores = st.lists(st.tuples(st.booleans(), st.integers(0, 20)), min_size=2, max_size=60).filter(
    lambda rows: any(r[0] for r in rows) and not all(r[0] for r in rows)
)


@settings(max_examples=300, deadline=None)
@given(_scores)
def test_roc_auc_and_curve_match_sklearn_with_ties(rows):
    labels = np.array([r[0] for r in rows], dtype=int)
    scores = np.array([r[1] for r in rows], dtype=float) / 4  # small integers: many ties
    assert metrics.roc_auc(labels, scores) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
    fpr, tpr, thr = metrics.roc_curve(torch.tensor(labels), torch.tensor(scores))
    ref_fpr, ref_tpr, ref_thr = skm.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    np.testing.assert_allclose(thr[1:], ref_thr[1:])


@settings(max_examples=300, deadline=None)
@given(_scores, st.sampled_from([0.0, 0.001, 0.05, 0.1, 0.5, 1.0]))
def test_tpr_at_fpr_is_the_best_reachable_threshold(rows, fpr):
    labels = np.array([r[0] for r in rows], dtype=int)
    scores = np.array([r[1] for r in rows], dtype=float)
    got = metrics.tpr_at_fpr(labels, scores, fpr)
    # slow reference: every threshold rule "score >= t", keep those within the false-positive budget
    best = 0.0
    for t in np.r_[np.inf, np.unique(scores)]:
        flagged = scores >= t
        if flagged[labels == 0].mean() <= fpr + 1e-12:
            best = max(best, flagged[labels == 1].mean())
    assert got == pytest.approx(best, abs=1e-12)


def test_tpr_at_low_fpr_hand_computed():
    # 1,000 negatives: at fpr 0.1% one negative may be flagged; the members above the 2nd-highest negative count
    rng = np.random.default_rng(0)
    neg = rng.normal(0, 1, 1000)
    pos = np.r_[np.full(30, 10.0), rng.normal(0, 1, 970)]
    labels = np.r_[np.zeros(1000), np.ones(1000)]
    scores = np.r_[neg, pos]
    second = np.sort(neg)[-2]
    want = float((pos > second).mean())
    assert metrics.tpr_at_fpr(labels, scores, 0.001) == pytest.approx(want)
    assert metrics.tpr_at_fpr(labels, scores, 0.001) >= 0.03  # the 30 sure members are found...
    assert metrics.roc_auc(labels, scores) < 0.55  # ...where the AUC is close to chance (0.5 + 0.03 / 2 expected)


def test_roc_needs_both_classes_and_finite_scores():
    with pytest.raises(UsageError, match="both positive"):
        metrics.roc_auc([1, 1], [0.1, 0.2])
    with pytest.raises(UsageError, match="NaN"):
        metrics.roc_auc([0, 1], [0.1, float("nan")])
    with pytest.raises(UsageError, match="labels must be 0"):
        metrics.roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(UsageError, match="fpr"):
        metrics.tpr_at_fpr([0, 1], [0.1, 0.2], 1.5)


def test_doctests():
    import doctest

    assert doctest.testmod(metrics).failed == 0


_flags = st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=60)


@settings(max_examples=300, deadline=None)
@given(_flags)
def test_detection_scores_match_sklearn(rows):
    removed = np.array([r[0] for r in rows])
    poisoned = np.array([r[1] for r in rows])
    got = metrics.detection_scores(torch.tensor(removed), torch.tensor(poisoned))
    p, r, f, _ = skm.precision_recall_fscore_support(
        poisoned, removed, average="binary", zero_division=np.nan, labels=[False, True], pos_label=True
    )
    for key, want in (("precision", p), ("recall", r), ("f1", f)):
        assert got[key] == pytest.approx(want, nan_ok=True), key
    clean = ~poisoned
    want_clean = (removed & clean).sum() / clean.sum() if clean.any() else math.nan
    assert got["removed_clean_rate"] == pytest.approx(want_clean, nan_ok=True)
    assert got["n_removed"] == removed.sum()


def test_detection_scores_refuse_non_boolean_flags():
    assert metrics.detection_scores([1, 0], [1, 1])["recall"] == 0.5  # 0/1 integers are flags
    with pytest.raises(UsageError, match="one boolean"):
        metrics.detection_scores([0.2, 0.9], [True, False])
    with pytest.raises(UsageError, match="one value per record each"):
        metrics.detection_scores([True], [True, False])
