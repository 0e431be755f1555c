"""Extraction attacks on small real models (no mocks): equation solving recovers the zoo's logistic models' closed
form from exactly d + 1 queries, locally and over real HTTP; Knockoff Nets (random, adaptive, label-only) and
Jacobian augmentation steal digits-mlp far above chance; every attack spends exactly what the victim counted and
never more than its budget; bad input is refused with a message saying what to change."""

from __future__ import annotations

import math

import pytest
import torch

from bastion import metrics
from bastion.attacks.extraction import (
    EXTRACTION_ATTACKS,
    AdaptiveKnockoffNets,
    EquationSolving,
    JacobianAugmentation,
    KnockoffNets,
    get_extraction_attack,
    jacobian_step,
    kmeans,
    query_victim,
    transferability,
)
from bastion.errors import UsageError
from bastion.models import RemoteClassifier, WrappedClassifier, load_model, save_model
from bastion.models.zoo import load_zoo
from blackbox_helpers import digits_endpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def _relative_to_class_0(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(units, d + 1) parameters; a softmax model's rows minus row 0 (the identifiable part)."""
    theta = torch.cat([weight, bias[:, None]], dim=1).double()
    return theta if theta.shape[0] == 1 else theta - theta[:1]


def _rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# -- equation solving --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,data,d", [("cancer-logreg", "breast-cancer", 30), ("digits-logreg", "digits", 64)])
def test_equation_solving_recovers_the_closed_form_with_d_plus_1_queries(name, data, d):
    from bastion.data import load_dataset

    victim, ds = load_zoo(name), load_dataset(data)
    before = victim.n_queries
    result = EquationSolving().extract(victim, 1000, eval_x=ds.x_test, eval_y=ds.y_test)
    assert result.queries == d + 1 == victim.n_queries - before - ds.x_test.shape[0]
    assert result.fidelity == 1.0 and result.curve[0].queries == d + 1
    truth = _relative_to_class_0(*victim.module.affine())  # standardisation folded in: the composed affine map
    stolen = _relative_to_class_0(*result.stolen.module.affine())
    assert _rel_error(stolen, truth) < 1e-4
    with torch.no_grad():  # the copy answers with the victim's probabilities
        assert torch.allclose(result.stolen.logits(ds.x_test), victim.logits(ds.x_test), rtol=1e-3, atol=1e-7)
    assert result.accuracy == result.extra["victim_accuracy"]


def test_equation_solving_over_http_matches_sklearn():
    with digits_endpoint() as (httpd, digits):
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        victim = RemoteClassifier(url, input_shape=(1, 8, 8), n_classes=10)
        result = EquationSolving(design="random", seed=3).extract(victim, 65, eval_x=digits.x_test[:100])
        est = httpd.model
        truth = _relative_to_class_0(torch.from_numpy(est.coef_), torch.from_numpy(est.intercept_))
        stolen = _relative_to_class_0(*result.stolen.module.affine())
    assert result.queries == 65 and result.fidelity == 1.0
    assert _rel_error(stolen, truth) < 1e-4


def test_equation_solving_refuses_a_label_only_victim_and_a_small_budget():
    with digits_endpoint(labels_only=True) as (httpd, _):
        victim = RemoteClassifier(f"http://127.0.0.1:{httpd.server_address[1]}", input_shape=(64,), n_classes=10)
        with pytest.raises(UsageError, match=r"needs the victim's probabilities.*knockoff with labels_only=True"):
            EquationSolving().extract(victim, 100)
        with pytest.raises(UsageError, match="needs the victim's probabilities"):  # now known before any query
            EquationSolving().extract(victim, 100)
    with pytest.raises(UsageError, match="needs at least 31 queries on this model, the budget is 30"):
        EquationSolving().extract(load_zoo("cancer-logreg"), 30)
    with pytest.raises(UsageError, match="design must be"):
        EquationSolving(design="grid")


# -- Knockoff Nets -----------------------------------------------------------------------------------------------
def test_knockoff_steals_digits_mlp_far_above_chance(digits, digits_mlp):
    attack = KnockoffNets(pool=digits.x_train, copy="digits-mlp", seed=0)
    result = attack.extract(digits_mlp, 400, eval_x=digits.x_test, eval_y=digits.y_test, checkpoints=[100])
    assert result.queries == 400 and [p.queries for p in result.curve] == [100, 400]
    g = torch.Generator().manual_seed(0)
    random_copy = metrics.fidelity(
        torch.randint(0, 10, (len(digits.x_test),), generator=g), digits_mlp.predict(digits.x_test)
    )
    assert random_copy < 0.2 and result.fidelity > 0.85  # measured 0.93
    assert result.curve[0].fidelity < result.fidelity - 0.15  # more queries, a better copy (0.63 -> 0.93)
    assert result.stolen.arch == "digits-mlp" and len(result.extra["checkpoint_seconds"]) == 2


def test_knockoff_labels_only_against_a_label_only_api(digits):
    with digits_endpoint(labels_only=True) as (httpd, _):
        victim = RemoteClassifier(f"http://127.0.0.1:{httpd.server_address[1]}", input_shape=(1, 8, 8), n_classes=10)
        y = query_victim(victim, digits.x_test[:20])
        assert victim.label_only and torch.equal(y.sum(1), torch.ones(20)) and set(y.unique().tolist()) == {0.0, 1.0}
        result = KnockoffNets(pool=digits.x_train, copy="digits-mlp", labels_only=True).extract(
            victim, 400, eval_x=digits.x_test
        )
        assert result.queries == 400 and victim.n_queries == 20 + len(digits.x_test) + 400
    assert result.fidelity > 0.8


@pytest.mark.parametrize("with_labels", [False, True])
def test_knockoff_adaptive_moves_its_policy_and_steals(digits, digits_mlp, with_labels):
    labels = {"pool_labels": digits.y_train} if with_labels else {}
    attack = AdaptiveKnockoffNets(pool=digits.x_train, copy="digits-mlp", seed=1, **labels)
    result = attack.extract(digits_mlp, 400, eval_x=digits.x_test, eval_y=digits.y_test)
    policy = torch.tensor(result.extra["policy"])
    assert result.queries == 400 and result.extra["strategy"] == "adaptive"
    assert math.isclose(float(policy.sum()), 1.0, abs_tol=1e-9) and float(policy.max() - policy.min()) > 0.02
    assert result.fidelity > 0.8  # measured ~0.92


def test_kmeans_finds_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = torch.arange(3).repeat_interleave(50)
    x = centres[truth] + 0.5 * torch.randn(150, 2, generator=g)
    labels = kmeans(x, 3, torch.Generator().manual_seed(1))
    pairs = {(int(a), int(b)) for a, b in zip(truth, labels)}
    assert len(pairs) == 3  # a one-to-one map between the true and the found clusters


def test_noise_pool_copy_is_worse_than_a_natural_pool(digits, digits_mlp):
    noise = KnockoffNets(copy="digits-mlp").extract(digits_mlp, 200, eval_x=digits.x_test)
    natural = KnockoffNets(pool=digits.x_train, copy="digits-mlp").extract(digits_mlp, 200, eval_x=digits.x_test)
    assert noise.queries == natural.queries == 200
    assert noise.fidelity < natural.fidelity - 0.3  # measured 0.14 vs 0.85


# -- Jacobian-based augmentation ---------------------------------------------------------------------------------
class Recording(WrappedClassifier):
    """A real model that keeps every input it was asked about."""

    def __init__(self, wrapped):
        super().__init__(wrapped)
        self.asked: list[torch.Tensor] = []

    def _scores(self, x):
        self.asked.append(x.detach().clone())
        return super()._scores(x)


def test_jacobian_grows_the_set_within_the_budget(digits, digits_mlp):
    attack = JacobianAugmentation(seed_set=digits.x_train, n_seed=100, copy="digits-mlp", seed=0)
    victim = Recording(digits_mlp)
    result = attack.extract(victim, 700, eval_x=digits.x_test, eval_y=digits.y_test)
    assert result.extra["set_sizes"] == [100, 200, 400, 700] and result.queries == 700
    assert [p.queries for p in result.curve] == [100, 200, 400, 700]
    asked = torch.cat(victim.asked[1:]).flatten(1)  # after the held-out inputs
    assert asked.shape[0] == 700 and torch.unique(asked, dim=0).shape[0] == 700  # every query a new point
    seeds, grown = asked[:100], asked[100:]
    assert torch.cdist(grown, seeds, p=float("inf")).min() > 0.05  # synthesised, not replayed seeds
    assert result.fidelity > 0.75 and result.fidelity > result.curve[0].fidelity + 0.15  # measured 0.46 -> 0.86


def test_jacobian_step_moves_lambda_along_the_sign_and_stays_in_bounds(digits_mlp, digits):
    x, y = digits.x_test[:50], digits.y_test[:50]
    new = jacobian_step(digits_mlp.module, x, y, 0.1, (0.0, 1.0))
    moved = (new - x).abs()
    assert float(new.min()) >= 0 and float(new.max()) <= 1
    inside = (x >= 0.1) & (x <= 0.9)  # no clipping can apply there
    assert torch.allclose(moved[inside], torch.full_like(moved[inside], 0.1), atol=1e-6)


# -- the contract, for every registered attack -------------------------------------------------------------------
def _build(name, digits):
    kwargs = {
        "equation-solving": {},
        "knockoff": {"pool": digits.x_train, "copy": "digits-mlp", "epochs": 2},
        "knockoff-adaptive": {"pool": digits.x_train, "copy": "digits-mlp", "epochs": 2},
        "jacobian": {"seed_set": digits.x_train, "n_seed": 40, "copy": "digits-mlp", "epochs": 2},
    }[name]
    return get_extraction_attack(name, seed=0, **kwargs)


def test_every_registered_attack_counts_its_queries_exactly(digits):
    assert sorted(EXTRACTION_ATTACKS) == ["equation-solving", "jacobian", "knockoff", "knockoff-adaptive"]
    victim = load_zoo("digits-logreg")
    ran = 0
    for name in EXTRACTION_ATTACKS:
        for budget in (65, 131):
            before = victim.n_queries
            result = _build(name, digits).extract(victim, budget)
            assert result.queries == victim.n_queries - before <= budget
            assert result.queries == (65 if name == "equation-solving" else budget)
            assert result.curve == [] and result.stolen.input_shape == victim.input_shape
            ran += 1
    assert ran == 8


def test_bad_input_is_refused_with_what_to_change(digits, digits_mlp, mnist):
    with pytest.raises(UsageError, match=r"pool has shape \(4000, 1, 28, 28\) but the model expects \(N, 1, 8, 8\)"):
        KnockoffNets(pool=mnist.x_train, copy="digits-mlp").extract(digits_mlp, 100)
    with pytest.raises(UsageError, match="exceeds the pool's 50 inputs"):
        KnockoffNets(pool=digits.x_train[:50]).extract(digits_mlp, 100)
    with pytest.raises(UsageError, match=r"takes .*28.* but the victim"):
        KnockoffNets(pool=digits.x_train, copy="mnist-cnn").extract(digits_mlp, 100)
    with pytest.raises(UsageError, match="adaptive strategy chooses among pool inputs"):
        AdaptiveKnockoffNets()
    with pytest.raises(UsageError, match="unknown architecture"):
        KnockoffNets(copy="resnet")
    with pytest.raises(UsageError, match="checkpoints must lie in"):
        KnockoffNets(pool=digits.x_train).extract(digits_mlp, 100, checkpoints=[50, 200])
    with pytest.raises(UsageError, match="pass seed_set="):
        JacobianAugmentation()
    with pytest.raises(UsageError, match="drop checkpoints="):
        JacobianAugmentation(seed_set=digits.x_train).extract(digits_mlp, 300, checkpoints=[150])
    with pytest.raises(UsageError, match="budget must be a whole number"):
        KnockoffNets(pool=digits.x_train).extract(digits_mlp, 0)
    with pytest.raises(UsageError, match="unknown extraction attack 'knockof' \\(did you mean 'knockoff'"):
        get_extraction_attack("knockof")


# -- what the copy is worth ---------------------------------------------------------------------------------------
def test_copy_transfers_adversarial_examples_and_saves(digits, digits_mlp, tmp_path):
    result = KnockoffNets(pool=digits.x_train, copy="digits-mlp").extract(digits_mlp, 600)
    t = transferability(digits_mlp, result.stolen, digits.x_test[:200], digits.y_test[:200], 0.1)
    assert t["transfer_rate"] > t["noise_rate"] + 0.1 and t["n"] > 180  # measured 0.18 vs 0.01
    path = save_model(result.stolen, tmp_path / "copy.safetensors", arch="digits-mlp")
    again = load_model(path)
    assert torch.equal(again.predict(digits.x_test), result.stolen.predict(digits.x_test))
