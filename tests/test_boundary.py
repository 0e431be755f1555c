"""Boundary attack: decision-based baseline — no gradients, exact per-image query budgets, and it
walks along the decision boundary to well below its starting distance."""

from __future__ import annotations

import pytest

from bastion.attacks import ATTACKS
from bastion.attacks.evasion.boundary import BoundaryAttack
from bastion.data import load_dataset
from bastion.errors import UsageError
from bastion.models.zoo import load_zoo
from blackbox_helpers import BlackBoxTorch as _BlackBox
from blackbox_helpers import GradientFree as _Guarded


def test_registered_and_decision_based():
    assert ATTACKS["boundary"] is BoundaryAttack
    assert BoundaryAttack.needs_gradients is False and BoundaryAttack.minimum_norm
    assert BoundaryAttack.norms == ("l2",)


def test_beats_its_starting_point_without_gradients(mnist_cnn, mnist):
    x, y = mnist.x_test[:20], mnist.y_test[:20]
    guarded = _BlackBox(_Guarded(mnist_cnn.module), n_classes=10, input_shape=(1, 28, 28), output="logits")
    r = BoundaryAttack(max_queries=1500)(guarded, x, y)
    start = r.extra["initial_norms"]
    assert r.success_rate == 1.0 and r.gradients == 0
    assert bool((r.norms <= start + 1e-5).all())
    # measured: median 8.3 at the start, about 6 after 1500 queries
    assert r.median_perturbation < 0.85 * float(start.median())
    assert int((r.norms < 0.95 * start).sum()) >= 15


def test_queries_are_counted_exactly(digits_mlp, digits):
    x, y = digits.x_test[:15], digits.y_test[:15]
    for budget in (23, 180):
        r = BoundaryAttack(max_queries=budget)(digits_mlp, x, y)
        q = r.extra["queries"]
        assert q.shape == (15,) and int(q.max()) <= budget
        assert int(q.sum()) == r.queries
        assert int(q.min()) >= budget - 1


def test_targeted(digits_mlp, digits):
    x, y = digits.x_test[:20], digits.y_test[:20]
    t = (y + 3) % 10
    r = BoundaryAttack(max_queries=400)(digits_mlp, x, y, t)
    started = ~r.extra["initial_norms"].isnan()
    assert int(started.sum()) >= 5
    assert bool((r.pred_adv[started] == t[started]).all())
    assert not bool(r.success[~started].any())


def test_sklearn_black_box():
    model, data = load_zoo("cancer-gbt"), load_dataset("breast-cancer")
    x, y = data.x_test[:30], data.y_test[:30]
    r = BoundaryAttack(max_queries=500)(model, x, y)
    assert r.success_rate == 1.0 and int(r.extra["queries"].max()) <= 500
    assert r.median_perturbation < 0.9 * float(r.extra["initial_norms"].median())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_queries": 0},
        {"norm": "linf"},
        {"spherical_step": 0.0},
        {"source_step": -1.0},
        {"step_adaptation": 1.0},
        {"update_stats_every_k": 0},
        {"init_trials": 0},
        {"source_step_convergence": 0.0},
    ],
)
def test_invalid_arguments(kwargs):
    with pytest.raises(UsageError):
        BoundaryAttack(**kwargs)
