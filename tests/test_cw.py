"""Carlini-Wagner L2 on the MNIST zoo CNN (real model, small budgets to stay fast)."""

from __future__ import annotations

import pytest
import torch

from bastion.attacks.evasion.cw import CarliniWagnerL2
from bastion.attacks.evasion.deepfool import DeepFool
from bastion.attacks.evasion.pgd import PGD
from bastion.data import load_dataset
from bastion.errors import UsageError
from bastion.models.zoo import load_zoo

N = 12
# a reduced budget (the paper's defaults take minutes on CPU): a larger step and a starting
# constant near the usual MNIST optimum let 4 search rounds of 60 steps converge
FAST = {"binary_search_steps": 4, "max_iterations": 60, "learning_rate": 0.1, "initial_const": 1.0}


@pytest.fixture(scope="module")
def mnist():
    model = load_zoo("mnist-cnn")
    d = load_dataset("mnist5k")
    return model, d.x_test[:N], d.y_test[:N]


@pytest.fixture(scope="module")
def untargeted(mnist):
    model, x, y = mnist
    return CarliniWagnerL2(**FAST)(model, x, y)


def test_untargeted_success_and_norms(mnist, untargeted):
    r = untargeted
    assert r.success_rate >= 0.95
    assert 0.6 <= r.median_perturbation <= 2.0
    assert r.x_adv.min() >= 0 and r.x_adv.max() <= 1
    assert r.gradients > 0


def test_smaller_than_deepfool_and_pgd(mnist, untargeted):
    model, x, y = mnist
    df = DeepFool(norm="l2")(model, x, y)
    assert untargeted.median_perturbation <= df.median_perturbation
    # the smallest L2 budget at which PGD fools half the images is above C&W's median
    pgd_eps = next(
        eps
        for eps in (0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
        if PGD(eps=eps, norm="l2", steps=20)(model, x, y).success_rate >= 0.5
    )
    assert untargeted.median_perturbation <= pgd_eps


def test_binary_search_tightens_the_constant(mnist, untargeted):
    """One search round (fixed c) is worse than five on the same budget per round."""
    model, x, y = mnist
    one = CarliniWagnerL2(**{**FAST, "binary_search_steps": 1, "initial_const": 10.0})(model, x[:8], y[:8])
    ok = one.success & untargeted.success[:8] & one.clean_correct
    assert bool(ok.any())
    assert float(untargeted.norms[:8][ok].median()) < float(one.norms[ok].median())


def test_targeted_reaches_targets(mnist):
    model, x, y = mnist
    x, y = x[:6], y[:6]
    t = (y + 1) % 10
    r = CarliniWagnerL2(**FAST)(model, x, y, targets=t)
    assert r.success_rate >= 0.9
    assert bool((r.pred_adv[r.success] == t[r.success]).all())
    assert 0.5 <= r.median_perturbation <= 3.5


def test_confidence_gives_a_margin(mnist):
    model, x, y = mnist
    x, y = x[:6], y[:6]
    kappa = 3.0
    r = CarliniWagnerL2(**FAST, confidence=kappa)(model, x, y)
    ok = r.success & r.clean_correct
    assert int(ok.sum()) >= 5
    with torch.no_grad():
        z = model.logits(r.x_adv[ok])
    zy = z.gather(1, y[ok][:, None]).squeeze(1)
    other = z.scatter(1, y[ok][:, None], float("-inf")).amax(1)
    assert bool((other - zy >= kappa - 1e-3).all())


def test_failures_come_back_unperturbed(mnist):
    model, x, y = mnist
    r = CarliniWagnerL2(binary_search_steps=1, max_iterations=5, initial_const=1e-3)(model, x[:6], y[:6])
    failed = ~r.success
    assert bool(failed.any())
    assert torch.equal(r.x_adv[failed], x[:6][failed])


def test_eps_projects(mnist):
    model, x, y = mnist
    r = CarliniWagnerL2(eps=0.3, **FAST)(model, x[:6], y[:6])
    assert float(r.norms.max()) <= 0.3 + 1e-5


def test_invalid_arguments():
    bad = (
        {"binary_search_steps": 0},
        {"max_iterations": -1},
        {"learning_rate": 0},
        {"initial_const": -1.0},
        {"confidence": -0.5},
        {"abort_early": "yes"},
        {"norm": "linf"},
        {"max_iterations": 2.5},
    )
    for kwargs in bad:
        with pytest.raises(UsageError):
            CarliniWagnerL2(**kwargs)
    a = CarliniWagnerL2()
    assert (a.binary_search_steps, a.max_iterations, a.learning_rate, a.initial_const, a.confidence) == (
        5,
        100,
        0.1,
        1e-2,
        0.0,
    )
    assert a.eps is None and "initial_const=0.01" in repr(a)
