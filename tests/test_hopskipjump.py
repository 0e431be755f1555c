"""HopSkipJump: decision-based (labels only, no gradients), exact per-image query budgets, and a
perturbation size that shrinks with the budget towards white-box C&W's on a real MNIST CNN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bastion.attacks import ATTACKS, get_attack
from bastion.attacks.evasion.cw import CarliniWagnerL2
from bastion.attacks.evasion.hopskipjump import HopSkipJump
from bastion.data import load_dataset
from bastion.errors import UsageError
from bastion.models.zoo import load_zoo
from blackbox_helpers import BlackBoxTorch as _BlackBox
from blackbox_helpers import GradientFree as _Guarded


class _LabelsOnly(nn.Module):
    """Exposes nothing but the predicted label (as a one-hot score row)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        z = self.inner(x)
        return nn.functional.one_hot(z.argmax(1), z.shape[1]).to(z.dtype)


@pytest.fixture(scope="module")
def batch(mnist):
    return mnist.x_test[:30], mnist.y_test[:30]


def test_registered_and_decision_based():
    assert ATTACKS["hopskipjump"] is HopSkipJump
    assert HopSkipJump.needs_gradients is False and HopSkipJump.minimum_norm
    assert isinstance(get_attack("hopskipjump", max_queries=100), HopSkipJump)


def test_succeeds_without_any_gradient(mnist_cnn, batch):
    x, y = batch[0][:20], batch[1][:20]
    guarded = _BlackBox(_Guarded(mnist_cnn.module), n_classes=10, input_shape=(1, 28, 28), output="logits")
    x_req = x.clone().requires_grad_(False)
    r = HopSkipJump(max_queries=300)(guarded, x_req, y)
    assert r.success_rate == 1.0 and r.gradients == 0
    assert r.median_perturbation < float(r.extra["initial_norms"].median())


def test_uses_labels_only(mnist_cnn, batch):
    """Same seed: the model's scores and a one-hot of its label give bit-identical results."""
    x, y = batch[0][:8], batch[1][:8]
    labels = _BlackBox(_LabelsOnly(mnist_cnn.module), n_classes=10, input_shape=(1, 28, 28), output="logits")
    for norm in ("l2", "linf"):
        a = HopSkipJump(norm=norm, max_queries=200, seed=3)(mnist_cnn, x, y)
        b = HopSkipJump(norm=norm, max_queries=200, seed=3)(labels, x, y)
        assert torch.equal(a.x_adv, b.x_adv)
        assert torch.equal(a.extra["queries"], b.extra["queries"])


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_queries_are_counted_exactly(mnist_cnn, batch, norm):
    x, y = batch[0][:12], batch[1][:12]
    for budget in (37, 260):
        r = HopSkipJump(norm=norm, max_queries=budget)(mnist_cnn, x, y)
        q = r.extra["queries"]
        assert q.shape == (12,) and int(q.max()) <= budget
        assert int(q.sum()) == r.queries
        assert int(q.min()) >= budget - 30  # the budget is spent, not left over


def test_norm_shrinks_with_budget_towards_cw(mnist_cnn, batch):
    x, y = batch[0][:20], batch[1][:20]
    small = HopSkipJump(max_queries=300)(mnist_cnn, x, y)
    large = HopSkipJump(max_queries=1000)(mnist_cnn, x, y)
    cw = CarliniWagnerL2()(mnist_cnn, x, y)
    assert small.success_rate == 1.0 and large.success_rate == 1.0
    # measured: 3.7 at 300 queries, 2.4 at 1000, C&W 1.3 (first 20 images)
    assert large.median_perturbation < 0.8 * small.median_perturbation
    assert 0.8 * cw.median_perturbation < large.median_perturbation < 2.5 * cw.median_perturbation
    assert bool((large.norms <= large.extra["initial_norms"] + 1e-5).all())


def test_linf(mnist_cnn, batch):
    x, y = batch[0][:20], batch[1][:20]
    r = HopSkipJump(norm="linf", max_queries=600)(mnist_cnn, x, y)
    assert r.success_rate == 1.0 and r.threat.norm == "linf"
    # measured median Linf ~0.25 vs ~0.5 at the start (PGD needs about 0.1-0.15 on this model)
    assert 0.05 < r.median_perturbation < 0.7 * float(r.extra["initial_norms"].median())


def test_targeted(digits_mlp, digits):
    x, y = digits.x_test[:30], digits.y_test[:30]
    t = (y + 1) % 10
    r = HopSkipJump(max_queries=800)(digits_mlp, x, y, t)
    started = ~r.extra["initial_norms"].isnan()
    assert int(started.sum()) >= 10  # uniform noise hits the target class for many images
    assert bool(r.success[started].all()) and bool((r.pred_adv[started] == t[started]).all())
    assert bool((r.x_adv[~started] == x[~started]).all()) and not bool(r.success[~started].any())


def test_eps_stops_early(mnist_cnn, batch):
    x, y = batch[0][:10], batch[1][:10]
    r = HopSkipJump(eps=6.0, max_queries=2000)(mnist_cnn, x, y)
    assert r.success_rate == 1.0 and bool((r.norms <= 6.0 + 1e-5).all())
    assert r.queries < 10 * 2000 // 4


def test_sklearn_black_box():
    model, data = load_zoo("cancer-gbt"), load_dataset("breast-cancer")
    assert not model.white_box
    x, y = data.x_test[:30], data.y_test[:30]
    for norm in ("l2", "linf"):
        r = HopSkipJump(norm=norm, max_queries=500)(model, x, y)
        assert r.success_rate == 1.0
        assert r.median_perturbation < 0.85 * float(r.extra["initial_norms"].median())
        assert int(r.extra["queries"].max()) <= 500


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_queries": 0},
        {"max_queries": 2.5},
        {"norm": "l1"},
        {"init_num_evals": 0},
        {"max_num_evals": 10},
        {"gamma": -1.0},
        {"steps": 0},
        {"init_trials": 0},
        {"query_batch_size": 0},
        {"eps": -1.0},
    ],
)
def test_invalid_arguments(kwargs):
    with pytest.raises(UsageError):
        HopSkipJump(**kwargs)


def test_repr_shows_configuration():
    text = repr(HopSkipJump(max_queries=123, norm="linf"))
    assert "max_queries=123" in text and "norm='linf'" in text
