"""Poisoning attacks: the contract for every registered attack (a hypothesis property test: records inside the
bounds, an exact record of what changed, determinism, save/load), bad input, and what each attack achieves on
small real models (digits-mlp, a logistic model of breast-cancer; mnist-cnn in the slow tests of
tests/test_poisoning_security.py).
"""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.attacks.poisoning import (
    POISONING_ATTACKS,
    BadNets,
    Blended,
    CleanLabel,
    FeatureCollision,
    LabelFlip,
    PoisonedData,
    Trigger,
    evaluate_poisoning,
    get_poisoning_attack,
)
from bastion.data import Dataset, load_dataset
from bastion.errors import UsageError
from poison_helpers import logistic_accuracy, train_cached


@pytest.fixture(scope="module")
def small(digits):
    """30 digits training records of each class (300, in the data's order) and 100 test ones: the property test's
    data (every class has a 10% share)."""
    keep = torch.cat([torch.nonzero(digits.y_train == c).flatten()[:30] for c in range(10)]).sort().values
    return Dataset("digits-small", digits.x_train[keep], digits.y_train[keep], digits.x_test[:100],
                   digits.y_test[:100], digits.bounds, digits.n_classes)  # fmt: skip


def _case(name: str, draw, digits_mlp) -> dict:
    """Keyword arguments for a random configuration of the attack ``name`` on ``small`` (class shares ~10%)."""
    seed = draw(st.integers(0, 2**16))
    rate = draw(st.floats(0.01, 0.09))
    target = draw(st.integers(0, 9))
    if name in ("badnets", "blend"):
        return {"rate": rate, "seed": seed, "target": target, "all_to_all": draw(st.booleans())}
    if name == "label-flip":
        strategy = draw(st.sampled_from(["random", "pair", "loss-max"]))
        if strategy == "pair":
            return {"rate": rate, "seed": seed, "strategy": "pair", "source": (target + 1) % 10, "target": target}
        return {"rate": rate, "seed": seed, "strategy": strategy, "rounds": 3}
    if name == "clean-label":
        pert = draw(st.sampled_from(["pgd", "interpolation", "none"]))
        return {"rate": min(rate, 0.08), "seed": seed, "target": target, "perturbation": pert, "steps": 3,
                "surrogate": digits_mlp, "corners": draw(st.sampled_from([1, 4])), "size": 2}  # fmt: skip
    assert name == "feature-collision"
    return {"model": digits_mlp, "seed": seed, "target_index": draw(st.integers(0, 99)),
            "n_poisons": draw(st.integers(1, 3)), "max_iter": 5, "watermark": draw(st.sampled_from([0.0, 0.3]))}  # fmt: skip


def check_record(clean: Dataset, before: Dataset, out: PoisonedData, clean_label: bool) -> None:
    """The record says exactly what changed, and nothing else changed."""
    d, n = out.data, clean.x_train.shape[0]
    lo, hi = clean.bounds
    assert float(d.x_train.min()) >= lo - 1e-6 and float(d.x_train.max()) <= hi + 1e-6
    idx = out.indices
    assert idx.dtype == torch.int64 and bool((idx[1:] > idx[:-1]).all())
    assert out.original_labels.shape == out.poisoned_labels.shape == idx.shape
    assert torch.equal(out.poisoned_labels, d.y_train[idx])
    src = out.source_indices
    assert src is not None and src.shape == idx.shape
    assert torch.equal(out.original_labels, clean.y_train[src])
    if d.x_train.shape[0] == n:  # changed in place
        assert torch.equal(src, idx)
        keep = ~out.is_poisoned
        assert torch.equal(d.x_train[keep], clean.x_train[keep]) and torch.equal(d.y_train[keep], clean.y_train[keep])
    else:  # appended
        assert torch.equal(idx, torch.arange(n, d.x_train.shape[0]))
        assert torch.equal(d.x_train[:n], clean.x_train) and torch.equal(d.y_train[:n], clean.y_train)
    if clean_label:
        assert torch.equal(out.poisoned_labels, out.original_labels)
    assert torch.equal(d.x_test, clean.x_test) and torch.equal(d.y_test, clean.y_test)
    assert torch.equal(clean.x_train, before.x_train) and torch.equal(clean.y_train, before.y_train)  # untouched


def test_every_registered_attack_is_covered():
    assert set(POISONING_ATTACKS) == {"badnets", "blend", "label-flip", "clean-label", "feature-collision"}
    assert POISONING_ATTACKS["clean-label"].clean_label and POISONING_ATTACKS["feature-collision"].clean_label
    assert not POISONING_ATTACKS["label-flip"].clean_label and not POISONING_ATTACKS["badnets"].clean_label


@pytest.mark.parametrize("name", sorted(POISONING_ATTACKS))
def test_every_record_is_exact_in_bounds_and_deterministic(name, small, digits_mlp):
    cls = POISONING_ATTACKS[name]
    before = Dataset("copy", small.x_train.clone(), small.y_train.clone(), small.x_test, small.y_test)
    ran = []

    @settings(max_examples=12, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip
    @given(data=st.data())
    def check(data):
        kwargs = _case(name, data.draw, digits_mlp)
        out = get_poisoning_attack(name, **kwargs).poison(small)
        check_record(small, before, out, cls.clean_label)
        assert out.n_poisoned >= 1 and out.attack == name
        again = cls(**kwargs).poison(small)
        assert torch.equal(again.data.x_train, out.data.x_train) and torch.equal(again.data.y_train, out.data.y_train)
        if name == "label-flip":
            assert bool((out.poisoned_labels != out.original_labels).all())  # every recorded flip is a flip
        ran.append(kwargs)

    check()
    assert len(ran) >= 10


@pytest.mark.parametrize(
    "attack",
    [BadNets(rate=0.05, target=3), LabelFlip(rate=0.1, strategy="pair", source=1, target=7)],
    ids=["badnets", "label-flip-pair"],
)
def test_save_round_trips_through_load_dataset(attack, small, tmp_path):
    out = attack.poison(small)
    data_path, record_path = out.save(tmp_path / "poisoned.npz")
    back = load_dataset(data_path)
    assert torch.equal(back.x_train, out.data.x_train) and torch.equal(back.y_train, out.data.y_train)
    assert torch.equal(back.x_test, small.x_test) and torch.equal(back.y_test, small.y_test)
    assert tuple(back.bounds) == tuple(small.bounds)
    record = json.loads(record_path.read_text())
    assert record["indices"] == out.indices.tolist() and record["poisoned_labels"] == out.poisoned_labels.tolist()
    assert record["target"] == out.target


def test_feature_collision_save_keeps_the_appended_poisons(small, digits_mlp, tmp_path):
    out = FeatureCollision(model=digits_mlp, target_index=4, n_poisons=3, max_iter=5).poison(small)
    back = load_dataset(out.save(tmp_path / "fc.npz")[0])
    assert back.x_train.shape[0] == small.x_train.shape[0] + 3 and torch.equal(back.x_train, out.data.x_train)
    record = json.loads((tmp_path / "fc.json").read_text())
    assert record["extra"]["target_indices"] == [4] and record["source_indices"] == out.source_indices.tolist()


def test_label_flip_strategies_flip_what_they_say(small):
    pair = LabelFlip(rate=0.05, strategy="pair", source=2, target=5, seed=1).poison(small)
    assert bool((pair.original_labels == 2).all()) and bool((pair.poisoned_labels == 5).all()) and pair.target == 5
    assert pair.n_poisoned == 15
    rnd = LabelFlip(rate=0.2, seed=3).poison(small)
    assert rnd.target is None and rnd.n_poisoned == 60 and len(set(rnd.poisoned_labels.tolist())) == 10
    other = LabelFlip(rate=0.2, seed=4).poison(small)
    assert not torch.equal(rnd.indices, other.indices)  # the seed decides


BAD = [
    (lambda: BadNets(rate=0.0), "strictly between 0 and 1"),
    (lambda: LabelFlip(rate=1.5), "strictly between 0 and 1"),
    (lambda: LabelFlip(strategy="worst"), "strategy must be one of"),
    (lambda: LabelFlip(strategy="pair", source=1), "needs source= and target="),
    (lambda: LabelFlip(strategy="pair", source=3, target=3), "two different classes"),
    (lambda: LabelFlip(target=3), "for strategy='pair'"),
    (lambda: LabelFlip(strategy="loss-max", rounds=0), "rounds must be"),
    (lambda: CleanLabel(perturbation="gan"), "perturbation must be one of"),
    (lambda: CleanLabel(eps=-0.1), "eps must be"),
    (lambda: CleanLabel(tau=1.0), "tau must be below 1"),
    (lambda: CleanLabel(corners=2), "corners must be 1"),
    (lambda: CleanLabel(all_to_all=True), "all-to-one"),
    (lambda: CleanLabel(surrogate_arch="resnet-9000"), "unknown architecture"),
    (FeatureCollision, "needs model="),
]


@pytest.mark.parametrize("make, match", BAD, ids=[m for _, m in BAD])
def test_bad_configuration_is_refused(make, match):
    with pytest.raises(UsageError, match=match):
        make()


@pytest.mark.parametrize(
    "attack, match",
    [
        (lambda m, d: BadNets(target=10), r"target label must be a class index in \[0, 9\]"),
        (lambda m, d: BadNets(size=9), "larger than the 8x8 input"),
        (lambda m, d: BadNets(trigger=Trigger(torch.full((1, 8, 8), 2.0), bounds=(0, 2))), "outside the data's bounds"),
        (lambda m, d: Blended(trigger=Trigger.patch((1, 28, 28))), "build it for this data"),
        (lambda m, d: LabelFlip(rate=0.2, strategy="pair", source=1, target=2), "lower the rate to at most 0.100"),
        (lambda m, d: LabelFlip(strategy="pair", source=11, target=2), r"source label must be a class index"),
        (lambda m, d: CleanLabel(rate=0.2, target=1, surrogate=m), "lower the rate to at most 0.100"),
        (lambda m, d: FeatureCollision(model=m, target_index=100), "past the test split"),
        (lambda m, d: FeatureCollision(model=m, target_index=5, base_class=int(d.y_test[5])), "already of class"),
        (lambda m, d: FeatureCollision(model=m, n_poisons=50, base_class=1), "lower n_poisons"),
    ],
)
def test_bad_input_for_the_data_is_refused(attack, match, small, digits_mlp):
    with pytest.raises(UsageError, match=match):
        attack(digits_mlp, small).poison(small)


def test_clean_label_needs_a_surrogate_it_can_name(small):
    with pytest.raises(UsageError, match="pass surrogate_arch="):
        CleanLabel(rate=0.05).poison(small)


# -- what the attacks achieve ------------------------------------------------------------------------------------


@pytest.mark.parametrize("attack", [BadNets(rate=0.1, target=0, size=2), Blended(rate=0.1, target=0)], ids=repr)
def test_backdoors_poison_a_small_model(attack, digits, digits_mlp):
    poisoned = attack.poison(digits)
    model = train_cached(poisoned.data, "digits-mlp")
    r = evaluate_poisoning(model.predict, poisoned, clean_predict=digits_mlp.predict)
    assert r["attack_success_rate"] >= 0.9, r  # the backdoor answers
    assert r["clean_model_attack_success_rate"] <= 0.2, r  # the trigger alone does not
    assert r["clean_accuracy"] >= r["clean_model_accuracy"] - 0.05, r


def test_loss_max_flips_hurt_a_logistic_model_more_than_random_ones():
    data = load_dataset("breast-cancer")
    clean = logistic_accuracy(data)
    worst = logistic_accuracy(LabelFlip(rate=0.2, strategy="loss-max").poison(data).data)
    randoms = [logistic_accuracy(LabelFlip(rate=0.2, seed=s).poison(data).data) for s in range(3)]
    assert min(randoms) >= clean - 0.06, (clean, randoms)  # a logistic model shrugs off random label noise
    assert worst <= clean - 0.15 and worst <= min(randoms) - 0.1, (clean, worst, randoms)


@pytest.mark.slow
def test_clean_label_beats_the_trigger_stamped_on_unmodified_images(mnist, mnist_cnn):
    """Turner et al.'s point: the same trigger on the same target images, labels untouched, is learnt only when
    the images are first made hard to classify (PGD on the zoo model)."""
    plain = CleanLabel(rate=0.05, target=0, perturbation="none").poison(mnist)
    hard = CleanLabel(rate=0.05, target=0, perturbation="pgd", eps=0.3, surrogate=mnist_cnn).poison(mnist)
    assert torch.equal(plain.indices, hard.indices) and hard.extra["surrogate_fooled"] >= 0.95
    asr_plain = evaluate_poisoning(train_cached(plain.data).predict, plain)["attack_success_rate"]
    r = evaluate_poisoning(train_cached(hard.data).predict, hard, clean_predict=mnist_cnn.predict)
    assert asr_plain <= 0.1, asr_plain  # the trigger alone barely registers
    assert r["attack_success_rate"] >= asr_plain + 0.15, (r, asr_plain)
    assert r["clean_model_attack_success_rate"] <= 0.05, r
