"""The AutoAttack-style ensemble on the real mnist-cnn zoo model."""

from __future__ import annotations

import itertools

import pytest
import torch

from bastion.attacks.base import get_attack
from bastion.attacks.evasion.apgd import APGD, APGDT
from bastion.attacks.evasion.ensemble import Ensemble
from bastion.attacks.evasion.fgsm import FGSM
from bastion.attacks.evasion.pgd import PGD
from bastion.errors import UsageError

EPS = 0.1


@pytest.fixture(scope="module")
def model(mnist_cnn):
    return mnist_cnn


@pytest.fixture(scope="module")
def data(mnist):
    return mnist.x_test[:100], mnist.y_test[:100]


def _members():
    return [FGSM(eps=EPS), APGD(eps=EPS, steps=40), APGDT(eps=EPS, steps=40, n_target_classes=2)]


def test_ensemble_is_the_worst_case_over_members(model, data):
    x, y = data
    # several batches: the trail in extra must accumulate over them
    ens = Ensemble(members=_members(), eps=EPS, batch_size=40)(model, x, y)
    alone = [m(model, x, y).robust_accuracy for m in _members()]
    assert ens.robust_accuracy <= min(alone)
    assert ens.robust_accuracy < ens.clean_accuracy - 0.2  # a no-op ensemble stays at ~0.97
    assert float(ens.norms.max()) <= EPS + 1e-6

    trail = ens.extra["robust_accuracy_after"]
    assert [name for name, _ in trail] == ["fgsm", "apgd-ce", "apgd-t"]
    accs = [acc for _, acc in trail]
    assert all(a >= b for a, b in itertools.pairwise(accs))
    assert accs[0] < ens.extra["clean_accuracy"]  # FGSM alone breaks some
    assert accs[1] < accs[0]  # APGD-CE breaks what FGSM missed
    assert ens.extra["n_samples"] == 100
    assert ens.extra["clean_accuracy"] == pytest.approx(ens.clean_accuracy)
    assert accs[-1] == pytest.approx(ens.robust_accuracy, abs=0.011)


def test_default_members_follow_autoattack_standard():
    ens = get_attack("ensemble", eps=0.1, norm="l2")
    names = [m.name for m in ens._members]
    assert names == ["apgd-ce", "apgd-t"]
    assert all(m.eps == 0.1 and m.norm == "l2" for m in ens._members)
    assert "members=None" in repr(ens)


def test_members_must_share_the_threat_model():
    with pytest.raises(UsageError, match="threat model"):
        Ensemble(members=[APGD(eps=0.1), PGD(eps=0.2)], eps=0.1)
    with pytest.raises(UsageError, match="threat model"):
        Ensemble(members=[APGD(eps=0.1, norm="l2")], eps=0.1)
    with pytest.raises(UsageError, match="non-empty"):
        Ensemble(members=[], eps=0.1)
    with pytest.raises(UsageError, match="not an Attack"):
        Ensemble(members=[APGD(eps=0.1), "pgd"], eps=0.1)
    with pytest.raises(UsageError, match="norm"):
        Ensemble(eps=1.0, norm="l1")


def test_every_member_starts_from_the_batch_generator_state_as_autoattack_seeds_each_attack(digits_mlp, digits):
    """Ensemble(seed=s) of APGD-CE then APGD-T is APGD-CE(seed=s), then APGD-T(seed=s) on what it left: the same
    draws, so the same points — what makes it break exactly the reference's inputs (benchmarks/apgd_reference.py).
    An ensemble whose APGD-T continued the generator from APGD-CE would start APGD-T elsewhere."""
    x, y = digits.x_test[:120], digits.y_test[:120]
    eps, seed = 0.05, 3
    ens = Ensemble(members=[APGD(eps=eps, steps=20), APGDT(eps=eps, steps=20, n_target_classes=3)], eps=eps, seed=seed)
    got = ens(digits_mlp, x, y).x_adv
    first = APGD(eps=eps, steps=20, seed=seed)(digits_mlp, x, y).x_adv
    left = (digits_mlp.predict(first) == y).nonzero().flatten()
    assert 0 < left.numel() < x.shape[0]  # both members have work: the second one's starts matter
    expected = first.clone()
    expected[left] = APGDT(eps=eps, steps=20, n_target_classes=3, seed=seed)(digits_mlp, x[left], y[left]).x_adv
    assert torch.equal(got, expected)
