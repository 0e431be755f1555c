"""Property test: every attack, every norm it supports, random budgets, bounds and inputs — the
returned inputs never leave the eps-ball or the bounds (beyond 1e-6), and the reported norms and
success flags agree with the returned inputs.

Runs thousands of random cases in total over a small real model (digits-mlp) wrapped so its valid
input range is an arbitrary box [lo, hi] (the rescaling lives inside the module).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from torch import nn

from bastion.attacks import ATTACKS, get_attack
from bastion.models import TorchClassifier
from bastion.threat import perturbation_norm

# small iteration budgets: the property is about the threat model, not strength
FAST: dict[str, dict] = {
    "fgsm": {},
    "pgd": {"steps": 3},
    "mifgsm": {"steps": 3},
    "apgd-ce": {"steps": 4},
    "apgd-dlr": {"steps": 4},
    "apgd-t": {"steps": 3, "n_target_classes": 2},
    "cw": {"max_iterations": 6, "binary_search_steps": 2, "learning_rate": 0.1},
    "deepfool": {"steps": 4},
    "ensemble": {},
    "square": {"max_queries": 20},
    "simba": {"max_queries": 20},
    "noise": {"max_queries": 20},
    "hopskipjump": {"max_queries": 60},
    "boundary": {"max_queries": 60},
    "tabular": {"max_queries": 10},
    "transfer": {"steps": 2, "surrogate_epochs": 1, "n_augment": 1},
    "patch": {"steps": 1},
}
EXAMPLES_PER_ATTACK = 400
EXAMPLES = {"patch": 60, "transfer": 100, "hopskipjump": 150, "boundary": 150}  # slower per case
DEFAULT_SHARE = 4  # the default suite runs a quarter of each attack's cases; the slow run the other cases


class Rescale(nn.Module):
    def __init__(self, inner: nn.Module, lo: float, hi: float) -> None:
        super().__init__()
        self.inner, self.lo, self.hi = inner, lo, hi

    def forward(self, x):
        return self.inner((x - self.lo) / (self.hi - self.lo))


@pytest.fixture(scope="module")
def base_module(digits_mlp):
    return digits_mlp.module


def test_every_registered_attack_is_covered():
    assert set(FAST) == set(ATTACKS)


@pytest.mark.parametrize("name", sorted(FAST))
def test_results_stay_inside_the_threat_model(name, base_module, digits):
    _check_threat_model(name, base_module, digits, EXAMPLES.get(name, EXAMPLES_PER_ATTACK) // DEFAULT_SHARE, 0)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FAST))
def test_results_stay_inside_the_threat_model_on_more_cases(name, base_module, digits):
    examples = EXAMPLES.get(name, EXAMPLES_PER_ATTACK)
    _check_threat_model(name, base_module, digits, examples - examples // DEFAULT_SHARE, 1)


def _check_threat_model(name, base_module, digits, examples, stream):
    """``examples`` cases of the property for attack ``name``; ``stream`` picks another derandomised sequence of
    cases (the default suite's and the slow run's differ)."""
    cls = ATTACKS[name]
    cases = []

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(
        norm=st.sampled_from(cls.norms),
        eps=st.one_of(st.floats(1e-3, 3.0), st.sampled_from([0.0, 0.3, 8.0])),
        lo=st.floats(-2.0, 1.0),
        width=st.floats(0.2, 3.0),
        n=st.integers(1, 6),
        seed=st.integers(0, 2**16),
        targeted=st.booleans(),
        real=st.booleans(),
    )
    @hypothesis_seed(stream)  # a fixed, per-stream sequence (it takes precedence over derandomize's digest)
    def check(norm, eps, lo, width, n, seed, targeted, real):
        hi = lo + width
        model = TorchClassifier(Rescale(base_module, lo, hi), bounds=(lo, hi), n_classes=10, input_shape=(1, 8, 8))
        g = torch.Generator().manual_seed(seed)
        if real:  # real digits mapped into the box, so the model is mostly right
            idx = torch.randint(0, digits.x_test.shape[0], (n,), generator=g)
            x, y = lo + digits.x_test[idx] * width, digits.y_test[idx]
        else:
            x = lo + torch.rand(n, 1, 8, 8, generator=g) * width
            y = torch.randint(0, 10, (n,), generator=g)
        x = x.clamp(lo, hi)  # lo + u * width can round a hair past hi
        if getattr(cls, "minimum_norm", False) and eps > 2.0:
            eps = None  # unbounded minimum-norm run: only the bounds apply
        if norm == "l1" and eps is not None:
            eps = eps * 4
        if eps is None and not getattr(cls, "minimum_norm", False):
            eps = 0.3
        kwargs = dict(FAST[name])
        if name == "ensemble":  # fast members sharing the ensemble's budget
            from bastion.attacks.evasion.apgd import APGD, APGDT
            from bastion.attacks.evasion.pgd import PGD

            kwargs["members"] = (
                [PGD(eps=eps, norm=norm, steps=3), PGD(eps=eps, norm=norm, steps=3, loss="margin")]
                if norm == "l1"
                else [
                    APGD(eps=eps, norm=norm, steps=4, seed=seed),
                    APGDT(eps=eps, norm=norm, steps=3, n_target_classes=2, seed=seed),
                ]
            )
        attack = get_attack(name, eps=eps, norm=norm, seed=seed, **kwargs)
        t = (
            (y + 1 + torch.randint(0, 9, (n,), generator=g)) % 10
            if targeted and cls.supports_targets and name != "apgd-t"
            else None
        )
        r = attack(model, x, y, t)
        cases.append(n)
        assert r.x_adv.shape == x.shape and torch.isfinite(r.x_adv).all()
        assert float(r.x_adv.min()) >= lo - 1e-6 and float(r.x_adv.max()) <= hi + 1e-6
        measured = perturbation_norm(r.x_adv - x, norm)
        if eps is not None:
            assert float(measured.max()) <= eps + 1e-6
        assert torch.allclose(r.norms, measured, atol=1e-6)
        pred = model.predict(r.x_adv)
        assert torch.equal(pred, r.pred_adv)
        assert torch.equal(r.success, (pred == t) if t is not None else (pred != y))

    check()
    assert len(cases) >= examples  # the cases really ran
