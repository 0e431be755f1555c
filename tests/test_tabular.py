"""Constrained tabular evasion: FeatureConstraints (spec, projection, check) and the black-box
random search on breast-cancer against gradient-boosted trees and an MLP."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.attacks import get_attack
from bastion.attacks.evasion.constraints import FeatureConstraints
from bastion.attacks.evasion.tabular import ConstrainedAttack
from bastion.data import load_dataset
from bastion.errors import UsageError
from bastion.models.zoo import load_zoo

IMMUTABLE = [0, 1, 2, 3, 4]  # mean radius, texture, perimeter, area, smoothness
INTEGER = ["worst texture", "worst perimeter"]


@pytest.fixture(scope="module")
def cancer():
    return load_dataset("breast-cancer")


def spec_for(cancer, norm="linf", eps=0.2):
    lo, hi = cancer.meta["scale_min"], cancer.meta["scale_max"]
    names = cancer.feature_names
    integer = {n: {"scale": [lo[names.index(n)], hi[names.index(n)]]} for n in INTEGER}
    integer["worst smoothness"] = {"step": 0.125, "offset": 0.0}
    return {
        "immutable": IMMUTABLE,
        "integer": integer,
        "categorical": {"worst symmetry": [0.0, 0.25, 0.5, 0.75, 1.0]},
        "ranges": {"worst area": [0.0, 0.7]},
        "norm": norm,
        "eps": eps,
    }


def unscale(cancer, x, name):
    i = cancer.feature_names.index(name)
    return x[:, i].double() * (cancer.meta["scale_max"][i] - cancer.meta["scale_min"][i]) + cancer.meta["scale_min"][i]


@pytest.mark.parametrize(
    "zoo,norm,eps",
    [("cancer-gbt", "linf", 0.2), ("cancer-gbt", "l2", 0.5), ("cancer-mlp", "linf", 0.2), ("cancer-mlp", "l2", 0.5)],
)
def test_constrained_attack_flips_records_within_the_constraints(cancer, zoo, norm, eps):
    torch.set_num_threads(1)
    model = load_zoo(zoo)
    cons = FeatureConstraints.from_dict(spec_for(cancer, norm, eps), 30, cancer.feature_names)
    x = cons.snap(cancer.x_test, bounds=(0.0, 1.0))  # feasible records (integral in original units, ...)
    y = cancer.y_test
    r = ConstrainedAttack(constraints=cons, max_queries=500)(model, x, y)
    assert r.clean_accuracy > 0.9
    assert r.success_rate >= 0.5, r.success_rate
    assert torch.equal(r.x_adv[:, IMMUTABLE], x[:, IMMUTABLE])
    for name in INTEGER:
        v = unscale(cancer, r.x_adv, name)
        assert float((v - v.round()).abs().max()) <= 1e-4
    assert float(r.x_adv[:, cancer.feature_names.index("worst area")].max()) <= 0.7 + 1e-6
    assert bool(cons.check(x, r.x_adv, bounds=(0.0, 1.0)).all())
    assert r.x_adv.min() >= 0 and r.x_adv.max() <= 1
    q = r.extra["queries"]
    assert q.shape == (x.shape[0],) and int(q.max()) <= 500 and r.queries == int(q.sum())


def test_no_mutable_change_means_no_success(cancer):
    model = load_zoo("cancer-gbt")
    cons = FeatureConstraints(30, immutable=tuple(range(30)), eps=0.3)
    x = cancer.x_test[:20]
    r = ConstrainedAttack(constraints=cons, max_queries=20)(model, x, cancer.y_test[:20])
    assert torch.equal(r.x_adv[r.clean_correct], x[r.clean_correct]) and not bool((r.success & r.clean_correct).any())


def test_budget_has_one_source(cancer):
    cons = FeatureConstraints(30, eps=0.1, norm="l2")
    atk = ConstrainedAttack(constraints=cons)
    assert (atk.eps, atk.norm) == (0.1, "l2")
    assert ConstrainedAttack(constraints=cons, eps=0.1, norm="l2").eps == 0.1
    with pytest.raises(UsageError, match="disagrees"):
        ConstrainedAttack(constraints=cons, eps=0.2)
    with pytest.raises(UsageError, match="needs eps"):
        ConstrainedAttack(constraints=FeatureConstraints(30))
    with pytest.raises(UsageError, match="features but the model takes"):
        get_attack("tabular", eps=0.1, constraints=FeatureConstraints(29))(
            load_zoo("cancer-gbt"), cancer.x_test[:2], cancer.y_test[:2]
        )


@pytest.mark.parametrize(
    "spec,match",
    [
        ({"immutable": ["no such feature"]}, "unknown feature"),
        ({"immutable": [30]}, "not an integer in"),
        ({"immutable": [1], "integer": {"1": {"step": 1}}}, "both immutable and integer"),
        ({"integer": {"2": {"step": 0}}}, "step must be > 0"),
        ({"integer": {"2": {"step": -1}}}, "step must be > 0"),
        ({"integer": {"2": {"scale": [3, 3]}}}, "min < max"),
        ({"integer": {"2": {"scale": [0, 1], "step": 1}}}, "either"),
        ({"ranges": {"mean area": [0.8, 0.2]}}, "lo=0.8 > hi=0.2"),
        ({"eps": -0.1}, "eps must be >= 0"),
        ({"norm": "l7"}, "unknown norm"),
        ({"categorical": {"3": []}}, "non-empty"),
        ({"integer": {"3": 1}, "categorical": {"3": [0, 1]}}, "both integer and categorical"),
        ({"immutabel": [1]}, "unknown constraint keys"),
    ],
)
def test_invalid_specs_are_rejected(cancer, spec, match):
    with pytest.raises(UsageError, match=match):
        FeatureConstraints.from_dict(spec, 30, cancer.feature_names)


def test_spec_by_name_and_index_agree(cancer):
    a = FeatureConstraints.from_dict(
        {"immutable": ["mean radius", 3], "integer": ["worst area"]}, 30, cancer.feature_names
    )
    b = FeatureConstraints(30, immutable=(0, 3), integer={23: 1.0})
    assert a == b and hash(a) == hash(b)


D = 8
roles = st.lists(st.sampled_from(["free", "immutable", "integer", "categorical", "range"]), min_size=D, max_size=D)


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    roles=roles,
    norm=st.sampled_from(["linf", "l2", "l1"]),
    eps=st.one_of(st.none(), st.floats(0.0, 2.0)),
    step=st.floats(0.05, 0.5),
    offset=st.floats(0.0, 0.05),
    n=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    spread=st.floats(0.0, 3.0),
)
def test_project_always_satisfies_check(roles, norm, eps, step, offset, n, seed, spread):
    kinds = {k: [i for i, r in enumerate(roles) if r == k] for k in ("immutable", "integer", "categorical", "range")}
    cons = FeatureConstraints(
        D,
        immutable=tuple(kinds["immutable"]),
        integer={i: (step, offset) for i in kinds["integer"]},
        categorical={i: [0.0, 0.3, 0.9] for i in kinds["categorical"]},
        ranges={i: (0.2, 0.6) for i in kinds["range"]},
        norm=norm,
        eps=eps,
    )
    g = torch.Generator().manual_seed(seed)
    x0 = cons.snap(torch.rand(n, D, generator=g), bounds=(0.0, 1.0))
    x = x0 + spread * (torch.rand(n, D, generator=g) * 2 - 1)
    out = cons.project(x0, x, bounds=(0.0, 1.0))
    assert bool(cons.check(x0, out, bounds=(0.0, 1.0)).all())
    assert torch.equal(out[:, kinds["immutable"]], x0[:, kinds["immutable"]])
    assert bool(cons.check(x0, cons.project(x0, out, bounds=(0.0, 1.0)), bounds=(0.0, 1.0)).all())
