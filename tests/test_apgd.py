"""Auto-PGD (apgd-ce, apgd-dlr, apgd-t) on the real mnist-cnn zoo model."""

from __future__ import annotations

import pytest
import torch

from bastion.attacks.base import get_attack
from bastion.attacks.evasion.apgd import APGD, APGDDLR, APGDT
from bastion.attacks.evasion.pgd import PGD
from bastion.errors import UsageError

EPS = 0.1


@pytest.fixture(scope="module")
def model(mnist_cnn):
    return mnist_cnn


@pytest.fixture(scope="module")
def data(mnist):
    return mnist.x_test[:200], mnist.y_test[:200]


@pytest.fixture(scope="module")
def apgd_ce(model, data):
    x, y = data
    return APGD(eps=EPS)(model, x, y)


def _inside(result, x, eps):
    assert float(result.norms.max()) <= eps + 1e-6
    assert float(result.x_adv.min()) >= 0.0 and float(result.x_adv.max()) <= 1.0
    assert result.x_adv.shape == x.shape


def test_apgd_ce_at_least_as_strong_as_pgd40(model, data, apgd_ce):
    x, y = data
    pgd = PGD(eps=EPS, steps=40, step_size=0.01)(model, x, y)
    assert apgd_ce.clean_accuracy > 0.93
    # a no-op attack would leave robust accuracy at clean accuracy (~0.96)
    assert apgd_ce.robust_accuracy < apgd_ce.clean_accuracy - 0.2
    assert apgd_ce.robust_accuracy <= pgd.robust_accuracy
    assert 0.4 < apgd_ce.robust_accuracy  # mnist-cnn is not that fragile at eps=0.1
    _inside(apgd_ce, x, EPS)
    assert apgd_ce.gradients > 0 and apgd_ce.queries >= apgd_ce.gradients
    # the reported success matches the model's predictions on x_adv
    with torch.no_grad():
        pred = model.predict(apgd_ce.x_adv)
    assert torch.equal(pred != y, apgd_ce.success)


def test_apgd_is_reproducible_with_a_seed(model, data, apgd_ce):
    x, y = data
    again = APGD(eps=EPS)(model, x, y)
    assert torch.equal(again.success, apgd_ce.success)


def test_apgd_dlr_breaks_the_model(model, data):
    x, y = data
    r = APGDDLR(eps=EPS, steps=50)(model, x[:100], y[:100])
    assert r.robust_accuracy < r.clean_accuracy - 0.15
    _inside(r, x[:100], EPS)


def test_apgd_l2(model, data):
    x, y = data[0][:100], data[1][:100]
    r = APGD(eps=1.5, norm="l2", steps=50)(model, x, y)
    assert r.robust_accuracy < r.clean_accuracy - 0.25
    _inside(r, x, 1.5)


def test_early_stop_changes_nothing_but_cost(model, data):
    x, y = data[0][:100], data[1][:100]
    fast = APGD(eps=EPS, steps=30)(model, x, y)
    full = APGD(eps=EPS, steps=30, early_stop=False)(model, x, y)
    assert fast.gradients < full.gradients
    agree = float((fast.success == full.success).float().mean())
    assert agree >= 0.97  # each sample's trajectory is its own (up to float noise across batch shapes)


def test_apgd_t_untargeted_top_classes(model, data):
    x, y = data[0][:100], data[1][:100]
    r = APGDT(eps=EPS, steps=30, n_target_classes=3)(model, x, y)
    assert r.targets is None
    assert r.robust_accuracy < r.clean_accuracy - 0.15
    one = APGDT(eps=EPS, steps=30, n_target_classes=1)(model, x, y)
    assert r.robust_accuracy <= one.robust_accuracy  # more target classes, only more chances
    _inside(r, x, EPS)


def test_apgd_t_explicit_targets(model, data):
    x, y = data[0][:100], data[1][:100]
    targets = (y + 1) % 10
    r = APGDT(eps=0.2, steps=50)(model, x, y, targets)
    hit = float((r.pred_adv == targets).float().mean())
    assert hit > 0.3  # clean: 0
    assert torch.equal(r.success, r.pred_adv == targets)
    _inside(r, x, 0.2)


def test_registry_names():
    assert isinstance(get_attack("apgd-ce", eps=0.1), APGD)
    assert get_attack("apgd-dlr", eps=0.1).loss == "dlr"
    assert isinstance(get_attack("apgd-t", eps=0.1), APGDT)
    assert "n_target_classes=9" in repr(APGDT(eps=0.1))
    assert "loss" not in repr(APGDDLR(eps=0.1))


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (APGD, {"steps": 0}, "steps"),
        (APGD, {"restarts": 1.5}, "restarts"),
        (APGD, {"rho": 1.5}, "rho"),
        (APGD, {"rho": 0}, "rho"),
        (APGD, {"loss": "margin"}, "loss"),
        (APGD, {"norm": "l1"}, "norms"),
        (APGD, {"eps": -1.0}, "eps"),
        (APGDT, {"n_target_classes": 0}, "n_target_classes"),
    ],
)
def test_invalid_arguments(cls, kwargs, match):
    with pytest.raises(UsageError, match=match):
        cls(**kwargs)
