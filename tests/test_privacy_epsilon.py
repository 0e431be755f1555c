"""Empirical epsilon lower bounds: the vectorised one-run p-value against the paper's literal loop, closed forms,
monotonicity, soundness by simulating a mechanism of known epsilon (randomized response), power on a perfect
auditor, Clopper-Pearson against an independent root-finding computation, the multi-run audit and input errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq
from scipy.stats import beta, binom

from bastion.defenses.privacy.epsilon import (
    clopper_pearson_epsilon,
    default_guesses,
    multi_run_audit,
    one_run_audit,
    one_run_epsilon,
    one_run_p_value,
)
from bastion.errors import UsageError


def literal_p_value(m, r, v, eps, delta):
    """Steinke, Nasr & Jagielski 2023, reference p_value_DP_audit, as a plain loop."""
    q = 1 / (1 + math.exp(-eps))
    beta_ = binom.sf(v - 1, r, q)
    alpha, s = 0.0, 0.0
    for i in range(1, v + 1):
        s += binom.pmf(v - i, r, q)
        if s > i * alpha:
            alpha = s / i
    return min(beta_ + alpha * delta * 2 * m, 1.0)


def literal_eps(m, r, v, delta, p):
    """Their get_eps_audit with the literal p-value, 30 bisection steps."""
    eps_min, eps_max = 0.0, 1.0
    while literal_p_value(m, r, v, eps_max, delta) < p:
        eps_max += 1
    for _ in range(30):
        eps = (eps_min + eps_max) / 2
        if literal_p_value(m, r, v, eps, delta) < p:
            eps_min = eps
        else:
            eps_max = eps
    return eps_min


@st.composite
def mrv(draw, max_m=60):
    m = draw(st.integers(1, max_m))
    r = draw(st.integers(0, m))
    v = draw(st.integers(0, r))
    return m, r, v


DELTAS = st.sampled_from([0.0, 1e-6, 1e-3, 0.05, 0.3])


@settings(max_examples=50, deadline=None)
@given(mrv(), st.floats(0.0, 8.0), DELTAS)
def test_p_value_matches_literal_loop(counts, eps, delta):
    m, r, v = counts
    assert one_run_p_value(m, r, v, eps, delta) == pytest.approx(
        literal_p_value(m, r, v, eps, delta), rel=1e-9, abs=1e-14
    )


@pytest.mark.parametrize(
    ("m", "r", "v", "delta", "c"),
    [(50, 30, 25, 0.0, 0.95), (200, 100, 80, 1e-3, 0.9), (40, 40, 39, 1e-3, 0.99), (100, 100, 95, 1e-4, 0.99)],
)
def test_epsilon_matches_literal_search(m, r, v, delta, c):
    assert one_run_epsilon(m, r, v, delta=delta, confidence=c) == pytest.approx(
        literal_eps(m, r, v, delta, 1 - c), abs=1e-6
    )
    assert literal_eps(m, r, v, delta, 1 - c) > 0.5  # a case where the search has something to find


@pytest.mark.parametrize(("r", "eps"), [(1, 0.0), (5, 1.0), (40, 2.5), (300, 6.0)])
def test_p_value_closed_form_all_correct(r, eps):
    q = 1 / (1 + math.exp(-eps))
    assert one_run_p_value(1000, r, r, eps, 0.0) == pytest.approx(q**r, rel=1e-10)


@pytest.mark.parametrize(("r", "c"), [(10, 0.95), (100, 0.95), (1000, 0.99), (57, 0.8)])
def test_epsilon_closed_form_all_correct(r, c):
    q = (1 - c) ** (1 / r)
    expected = math.log(q / (1 - q))
    assert one_run_epsilon(1000, r, r, delta=0.0, confidence=c) == pytest.approx(expected, abs=1e-6)
    assert expected > 0


@settings(max_examples=30, deadline=None)
@given(mrv(max_m=150), DELTAS)
def test_p_value_non_decreasing_in_epsilon(counts, delta):
    # under a larger epsilon, many correct guesses are more likely: the p-value grows (and the bound is the
    # largest epsilon still rejected)
    m, r, v = counts
    p = [one_run_p_value(m, r, v, eps, delta) for eps in np.linspace(0.0, 10.0, 41)]
    assert np.all(np.diff(p) >= -1e-12)


@pytest.mark.parametrize(("m", "r", "delta"), [(100, 60, 0.0), (1000, 200, 1e-5), (50, 50, 0.01)])
def test_bound_non_decreasing_in_correct_guesses(m, r, delta):
    bounds = [one_run_epsilon(m, r, v, delta=delta) for v in range(r + 1)]
    assert np.all(np.diff(bounds) >= -1e-9)
    assert bounds[0] == 0.0 and bounds[r // 2] == 0.0 and bounds[-1] > 0.5


def test_no_guess_or_no_correct_guess_gives_zero():
    assert one_run_epsilon(100, 0, 0, delta=1e-5) == 0.0
    assert one_run_epsilon(100, 50, 0, delta=1e-5) == 0.0
    assert one_run_p_value(100, 50, 0, 3.0, 1e-5) == 1.0


def randomized_response(rng, m, eps):
    """Canaries in with probability 1/2; eps-DP randomized response of each membership bit."""
    included = rng.random(m) < 0.5
    truthful = rng.random(m) < math.exp(eps) / (1 + math.exp(eps))
    return included, np.where(truthful, included, ~included)


def test_one_run_epsilon_sound_and_useful_on_randomized_response():
    rng = np.random.default_rng(0)
    m, eps, delta = 1000, 2.0, 1e-5
    bounds = []
    for _ in range(200):
        included, guess = randomized_response(rng, m, eps)
        bounds.append(one_run_epsilon(m, m, int(np.sum(guess == included)), delta=delta))
    bounds = np.array(bounds)
    assert np.mean(bounds > eps) <= 0.10
    assert np.median(bounds) > 1.0


def test_one_run_audit_sound_and_useful_on_randomized_response():
    rng = np.random.default_rng(1)
    m, eps, delta = 1000, 2.0, 1e-5
    bounds = []
    for _ in range(200):
        included, guess = randomized_response(rng, m, eps)
        scores = guess + 0.1 * rng.random(m)  # the response, ties broken by noise independent of membership
        bounds.append(one_run_audit(scores, included, delta=delta)["epsilon_lower_bound"])
    bounds = np.array(bounds)
    assert np.mean(bounds > eps) <= 0.10
    assert np.median(bounds) > 1.0


def test_one_run_audit_no_signal_gives_zero():
    rng = np.random.default_rng(2)
    zeros = 0
    for _ in range(100):
        included = rng.random(500) < 0.5
        zeros += one_run_audit(rng.normal(size=500), included, delta=1e-5)["epsilon_lower_bound"] == 0.0
    assert zeros >= 90


def test_one_run_audit_perfect_auditor():
    rng = np.random.default_rng(3)
    included = rng.random(1000) < 0.5
    out = one_run_audit(included.astype(float), included, delta=1e-5)
    assert out["epsilon_lower_bound"] > 4.0
    assert out["accuracy"] >= 0.99 and out["guesses"] in (500, 1000)
    assert out["method"] == "one-run (Steinke, Nasr & Jagielski 2023)" and out["m"] == 1000
    json.dumps(out)


def test_one_run_audit_grid_and_bonferroni():
    assert default_guesses(1000) == [10, 20, 50, 100, 200, 500, 1000]
    assert default_guesses(7) == [7]
    assert default_guesses(30) == [10, 20, 30]
    rng = np.random.default_rng(4)
    included, guess = randomized_response(rng, 300, 3.0)
    out = one_run_audit(guess.astype(float), included, delta=1e-5, confidence=0.9)
    rows = out["per_guesses"]
    assert [row["r"] for row in rows] == default_guesses(300)
    for row in rows:  # each r is tested at failure probability 0.1 / (number of r)
        assert row["epsilon"] == one_run_epsilon(300, row["r"], row["v"], delta=1e-5, confidence=1 - 0.1 / len(rows))
    assert out["epsilon_lower_bound"] == max(row["epsilon"] for row in rows) > 0
    alone = one_run_audit(guess.astype(float), included, delta=1e-5, confidence=0.9, guesses=[out["guesses"]])
    assert alone["epsilon_lower_bound"] >= out["epsilon_lower_bound"]  # one r: no Bonferroni penalty


def test_one_run_audit_guesses_and_ties():
    included = np.array([False] * 5 + [True] * 5)
    zeros = np.zeros(10)
    # equal scores: a later canary ranks higher, so "in" goes to the last ones and "out" to the first ones
    assert one_run_audit(zeros, included, delta=0.0, guesses=[10])["correct"] == 10
    assert one_run_audit(zeros, ~included, delta=0.0, guesses=[10])["correct"] == 0
    # odd r: ceil(r/2) "in" guesses from the top, floor(r/2) "out" guesses from the bottom
    scores = np.arange(10.0)
    wrong_top = included.copy()
    wrong_top[9] = False
    rows = one_run_audit(scores, wrong_top, delta=0.0, guesses=[3, 1, 2])["per_guesses"]
    assert [(row["r"], row["v"]) for row in rows] == [(1, 0), (2, 1), (3, 2)]


def test_clopper_pearson_no_errors_closed_form():
    n, delta, c = 1000, 1e-5, 0.95
    ub = 1 - 0.025 ** (1 / n)  # the Clopper-Pearson upper bound with 0 events, at failure probability 0.05 / 2
    assert ub == pytest.approx(beta.ppf(0.975, 1, n), rel=1e-10)
    expected = math.log((1 - delta - ub) / ub)
    assert clopper_pearson_epsilon(0, n, 0, n, delta=delta, confidence=c) == pytest.approx(expected, rel=1e-9)
    assert 5.0 < expected < 6.0


def cp_upper_by_root(k, n, alpha):
    """The upper bound p with P[Binomial(n, p) <= k] = alpha, found by root finding."""
    return brentq(lambda p: binom.cdf(k, n, p) - alpha, 1e-12, 1 - 1e-12, xtol=1e-14)


@pytest.mark.parametrize(("fp", "neg", "fn", "pos"), [(10, 1000, 200, 800), (300, 500, 3, 400), (1, 50, 2, 60)])
def test_clopper_pearson_against_root_finding(fp, neg, fn, pos):
    delta, c = 1e-3, 0.9
    fpr, fnr = cp_upper_by_root(fp, neg, 0.05), cp_upper_by_root(fn, pos, 0.05)
    expected = max(math.log((1 - delta - fpr) / fnr), math.log((1 - delta - fnr) / fpr), 0.0)
    assert clopper_pearson_epsilon(fp, neg, fn, pos, delta=delta, confidence=c) == pytest.approx(expected, rel=1e-7)
    assert expected > 0.5


def test_clopper_pearson_no_information():
    assert clopper_pearson_epsilon(500, 1000, 500, 1000, delta=1e-5) == 0.0
    assert clopper_pearson_epsilon(0, 0, 0, 1000, delta=1e-5) == 0.0  # no negatives: the FPR is unbounded
    assert clopper_pearson_epsilon(1000, 1000, 1000, 1000, delta=0.0) == 0.0


def test_multi_run_audit_needs_two_runs():
    with pytest.raises(UsageError, match="at least 2 training runs"):
        multi_run_audit([np.zeros(10)], [np.ones(10, bool)], delta=1e-5)


def test_multi_run_audit_perfect_separation():
    rng = np.random.default_rng(5)
    included = [rng.random(200) < 0.5 for _ in range(5)]
    out = multi_run_audit([inc.astype(float) for inc in included], included, delta=1e-5)
    pos = sum(int(inc.sum()) for inc in included[1:])
    assert out["threshold"] == 1.0 and out["runs"] == 5
    assert out["false_positives"] == out["false_negatives"] == 0
    assert out["positives"] == pos and out["negatives"] == 800 - pos
    assert out["epsilon_lower_bound"] == clopper_pearson_epsilon(0, 800 - pos, 0, pos, delta=1e-5) > 4.0
    assert out["method"] == "Clopper-Pearson (Jagielski, Ullman & Oprea 2020)"
    json.dumps(out)


def test_multi_run_audit_threshold_from_first_run_only():
    rng = np.random.default_rng(6)
    included = [rng.random(300) < 0.5 for _ in range(4)]
    scores = [inc + rng.normal(scale=0.5, size=300) for inc in included]
    out = multi_run_audit(scores, included, delta=1e-5)
    t = out["threshold"]
    assert t in scores[0]
    assert out["false_positives"] == sum(int(np.sum((s >= t) & ~inc)) for s, inc in zip(scores[1:], included[1:]))
    assert out["false_negatives"] == sum(int(np.sum((s < t) & inc)) for s, inc in zip(scores[1:], included[1:]))
    # a shift of 2 standard deviations: the best test sits in a tail (few false negatives), the bound is well above 0
    assert out["epsilon_lower_bound"] > 1.5
    other = multi_run_audit(scores[:1] + [-s for s in scores[1:]], included, delta=1e-5)  # later runs: no say
    assert other["threshold"] == t and other["epsilon_lower_bound"] == 0.0


def test_multi_run_audit_random_scores_give_zero():
    rng = np.random.default_rng(7)
    bounds = []
    for _ in range(10):
        included = [rng.random(200) < 0.5 for _ in range(5)]
        bounds.append(
            multi_run_audit([rng.normal(size=200) for _ in range(5)], included, delta=1e-5)["epsilon_lower_bound"]
        )
    assert sum(b == 0.0 for b in bounds) >= 9 and max(bounds) < 0.3


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: one_run_p_value(10, 5, 6, 1.0, 0.0), r"0 <= v <= r <= m"),
        (lambda: one_run_p_value(10, 11, 1, 1.0, 0.0), r"0 <= v <= r <= m"),
        (lambda: one_run_p_value(10, 5, -1, 1.0, 0.0), r"0 <= v <= r <= m"),
        (lambda: one_run_p_value(10, 5.0, 1, 1.0, 0.0), "r must be an integer"),
        (lambda: one_run_p_value(10, 5, 1, -0.5, 0.0), "epsilon must be"),
        (lambda: one_run_p_value(10, 5, 1, float("nan"), 0.0), "epsilon must be"),
        (lambda: one_run_p_value(10, 5, 1, 1.0, 1.0), r"delta must be in \[0, 1\)"),
        (lambda: one_run_epsilon(10, 5, 1, delta=-1e-5), "delta must be"),
        (lambda: one_run_epsilon(10, 5, 1, delta=float("nan")), "delta must be"),
        (lambda: one_run_epsilon(10, 5, 1, delta=0.0, confidence=1.0), r"confidence must be in \(0, 1\)"),
        (lambda: one_run_epsilon(10, 5, 1, delta=0.0, confidence=0.0), "confidence must be"),
        (lambda: one_run_audit(np.zeros(5), np.zeros(4, bool), delta=0.0), "same length"),
        (lambda: one_run_audit(np.zeros((2, 2)), np.zeros((2, 2), bool), delta=0.0), "1-D"),
        (lambda: one_run_audit([0.0, np.nan], [True, False], delta=0.0), "finite"),
        (lambda: one_run_audit([0.0, np.inf], [True, False], delta=0.0), "finite"),
        (lambda: one_run_audit([0.0, 1.0], [2, 0], delta=0.0), "booleans"),
        (lambda: one_run_audit([0.0, 1.0], [True, False], delta=0.0, guesses=[3]), "between 1 and m"),
        (lambda: one_run_audit([0.0, 1.0], [True, False], delta=0.0, guesses=[0]), "between 1 and m"),
        (lambda: one_run_audit([], [], delta=0.0), "at least one canary"),
        (lambda: one_run_audit([0.0, 1.0], [True, False], delta=0.0, confidence=1.5), "confidence"),
        (lambda: clopper_pearson_epsilon(11, 10, 0, 10, delta=0.0), "false_positives <= negatives"),
        (lambda: clopper_pearson_epsilon(0, 10, -1, 10, delta=0.0), "false_negatives <= positives"),
        (lambda: clopper_pearson_epsilon(0, 10, 0, 10, delta=1.5), "delta"),
        (lambda: multi_run_audit([np.zeros(3)] * 2, [np.zeros(3, bool)], delta=0.0), "same number of runs"),
        (lambda: multi_run_audit([np.zeros(3), np.zeros(4)], [np.zeros(3, bool)] * 2, delta=0.0), "of run 1"),
        (lambda: multi_run_audit([np.zeros(3), [np.nan] * 3], [np.zeros(3, bool)] * 2, delta=0.0), "finite"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(UsageError, match=match):
        call()
