"""Auto-PGD (apgd-ce, apgd-dlr, apgd-t) on the real mnist-cnn zoo model, and against the authors'
reference (the vendored ``benchmarks/autoattack_apgd.py``) on the small digits model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from bastion.attacks.base import get_attack
from bastion.attacks.evasion import gradient as gradient_module
from bastion.attacks.evasion.apgd import APGD, APGDDLR, APGDT
from bastion.attacks.evasion.pgd import PGD
from bastion.errors import UsageError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from autoattack_apgd import APGDAttack, APGDAttack_targeted

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
    _inside(r, x, EPS)


# -- restarts and target classes do something (digits-mlp: each check runs in a fraction of a second) --
@pytest.fixture(scope="module")
def digits_data(digits):
    return digits.x_test[:300], digits.y_test[:300]


@pytest.fixture
def one_thread(_few_threads):
    """The digits model is tiny: a second thread only adds overhead (40x slower on a busy 2-core machine)."""
    torch.set_num_threads(1)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(
    ("make", "min_gain"),
    [
        (lambda r: APGD(eps=0.12, steps=2, restarts=r), 6),  # measured: 13 more of 300
        (lambda r: APGDT(eps=0.1, steps=2, restarts=r, n_target_classes=1), 7),  # measured: 15
        (lambda r: APGDT(eps=0.1, steps=10, n_target_classes=r), 3),  # 1 vs 5 target classes; measured: 7
    ],
    ids=["apgd-restarts", "apgd-t-restarts", "apgd-t-targets"],
)
def test_more_restarts_or_targets_break_more(digits_mlp, digits_data, make, min_gain):
    """The first run is the same with the same seed, so one run's successes are a subset of five's;
    the later runs (new random starts, or the next target classes) must add successes."""
    x, y = digits_data
    one, five = make(1)(digits_mlp, x, y), make(5)(digits_mlp, x, y)
    assert bool((one.success <= five.success).all())
    assert int(five.success.sum() - one.success.sum()) >= min_gain


@pytest.mark.usefixtures("one_thread")
def test_apgd_t_attacks_the_k_highest_wrong_classes(digits_mlp, digits_data, monkeypatch):
    """Spy on the targeted loss: run r attacks the (r+1)-th highest logit of the clean input."""
    x, y = digits_data
    with torch.no_grad():
        z = digits_mlp.logits(x)
    ok = z.argmax(dim=1) == y
    x, y, z = x[ok], y[ok], z[ok]
    calls: list[torch.Tensor] = []
    real = gradient_module.get_loss  # APGD's loss comes through GradientAttack

    def spy(name):
        fn = real(name)

        def loss(zz, yy, t):
            calls.append(t.clone())
            return fn(zz, yy, t)

        return loss

    monkeypatch.setattr(gradient_module, "get_loss", spy)
    steps, k = 4, 4
    r = APGDT(eps=0.0, steps=steps, n_target_classes=k)(digits_mlp, x, y)
    assert not bool(r.success.any())  # eps 0 breaks nothing, so every run sees every input, in order
    assert len(calls) == k * (steps + 1)
    order = z.argsort(dim=1, descending=True)
    for rank in range(1, k + 1):
        for t in calls[(rank - 1) * (steps + 1) : rank * (steps + 1)]:
            assert torch.equal(t, order[:, rank])


# -- against the authors' reference (fra31/auto-attack, vendored) -------------------------------------
def _reference_best(module, x, y, eps, norm, loss, steps, seed):
    """The reference's single run from the start torch.manual_seed(seed) draws; bastion's generator
    seeded the same way draws the same start on CPU."""
    ref = APGDAttack(module, n_iter=steps, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, seed=seed, loss=loss)
    ref.init_hyperparam(x)
    torch.manual_seed(seed)
    x_best, robust, _, _ = ref.attack_single_run(x, y)
    return x_best, robust


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(
    ("loss", "norm", "eps", "steps", "gap", "max_share"),
    [
        # Linf: sign steps absorb float rounding, so the trajectories agree to the last step
        ("ce", "linf", 0.08, 100, 1e-5, 0.0),
        ("dlr", "linf", 0.08, 100, 1e-5, 0.0),
        # L2: normalised-gradient steps let ulp-level differences grow chaotically; measured 1% apart
        ("ce", "l2", 0.5, 30, 1e-4, 0.04),
        ("dlr", "l2", 0.5, 30, 1e-4, 0.04),
    ],
)
def test_apgd_follows_the_reference_step_for_step(digits_mlp, digits_data, loss, norm, eps, steps, gap, max_share):
    """Same start, same trajectory: the step-size schedule, the checkpoints (both conditions, the
    reference's first checkpoint included), momentum and the restart from the best point all agree
    when the highest-loss point of every input neither attack breaks is the same point."""
    x, y = digits_data
    with torch.no_grad():
        ok = digits_mlp.logits(x).argmax(dim=1) == y
    x, y = x[ok], y[ok]
    module = digits_mlp.module.eval()
    mismatched = compared = 0
    for seed in range(3):
        x_best, robust = _reference_best(module, x, y, eps, norm, loss, steps, seed)
        r = APGD(eps=eps, norm=norm, loss=loss, steps=steps, early_stop=False, seed=seed)(digits_mlp, x, y)
        assert abs(int(robust.sum()) - int((~r.success).sum())) <= 1
        both = robust & ~r.success  # bastion returns the best-loss point where it finds nothing
        diff = (r.x_adv[both] - x_best[both]).flatten(1).abs().amax(dim=1)
        mismatched, compared = mismatched + int((diff > gap).sum()), compared + int(both.sum())
    assert compared > 300
    assert mismatched <= max(1, max_share * compared)  # one trajectory in a few hundred may part by rounding


def _reference_robust(model, x, y, attack):
    with torch.no_grad():
        robust = model.logits(x).argmax(dim=1) == y
    adv = x.clone()
    adv[robust] = attack.perturb(x[robust], y[robust])
    with torch.no_grad():
        return model.logits(adv).argmax(dim=1) == y


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("which", ["apgd-ce", "apgd-t"])
def test_apgd_matches_or_beats_the_reference(digits_mlp, digits_data, which):
    """Over three seeds, bastion breaks every input the reference breaks (one input of slack for
    float rounding) and its robust accuracy is no higher (APGD-CE with 2 restarts; APGD-T with 3 targets)."""
    x, y = digits_data
    module = digits_mlp.module.eval()
    eps = 0.08
    for seed in range(3):
        if which == "apgd-ce":
            ref = APGDAttack(module, n_iter=100, eps=eps, n_restarts=2, seed=seed, loss="ce")
            ours = APGD(eps=eps, restarts=2, seed=seed)
        else:
            ref = APGDAttack_targeted(module, n_iter=100, eps=eps, seed=seed, n_target_classes=3)
            ours = APGDT(eps=eps, n_target_classes=3, seed=seed)
        ref_robust = _reference_robust(digits_mlp, x, y, ref)
        robust = ~ours(digits_mlp, x, y).success
        assert int((robust & ~ref_robust).sum()) <= 1
        assert int(robust.sum()) <= int(ref_robust.sum())


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
