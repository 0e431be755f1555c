"""Neural Cleanse (Wang et al. 2019) on real backdoored models: the target class is flagged, its reversed trigger
works, a clean model is not flagged; the anomaly index against hand-computed MADs; bad input -> UsageError.

The fast scans run on digits-mlp (8x8 digits: a full 10-class scan takes seconds) backdoored by BadNets with a
2x2 patch (target 7), and on the BadNets mnist-cnn fixture with two classes; the full 10-class mnist-cnn scans
(the issue's numbers, also printed by ``benchmarks/neural_cleanse.py``) are marked slow.
"""

from __future__ import annotations

import doctest
import json
import math
import statistics

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from bastion.attacks.poisoning import BadNets, Trigger
from bastion.defenses.sanitization import (
    NeuralCleanse,
    ScanResult,
    anomaly_index,
    flag_small_outliers,
    reverse_trigger,
    scan_result,
)
from bastion.errors import UsageError
from bastion.models.torch import TorchClassifier

DIGITS_TARGET = 7
FAST = {"steps": 30, "batches_per_step": 8}  # a full 10-class digits-mlp scan in seconds


@pytest.fixture(scope="module")
def digits_backdoor(digits):
    """digits-mlp trained on digits with BadNets at 10 % (2x2 checkerboard at the bottom right, target 7)."""
    from poison_helpers import train_cached

    poisoned = BadNets(rate=0.1, target=DIGITS_TARGET, size=2, seed=0).poison(digits)
    return poisoned, train_cached(poisoned.data, "digits-mlp")


@pytest.fixture(scope="module")
def digits_scan(digits_backdoor, digits):
    _, model = digits_backdoor
    return NeuralCleanse(**FAST).scan(model, digits.x_test, digits.y_test)


@pytest.fixture(scope="module")
def mnist_pair_scan(badnets_mnist, mnist):
    """The BadNets mnist-cnn scanned for its target 0 and for class 3 only, on 200 clean test images."""
    _, model = badnets_mnist
    return NeuralCleanse(steps=40, classes=[0, 3]).scan(model, mnist.x_test[:200], mnist.y_test[:200])


def stamped_success(result: ScanResult, cls: int, x: torch.Tensor, y: torch.Tensor, model) -> float:
    """Share of the inputs not of ``cls`` that the reversed trigger, stamped with ``Trigger.apply``, sends to it."""
    stamped = result.as_trigger(cls).apply(x[y != cls])
    return float((model.predict(stamped) == cls).double().mean())


# -- the anomaly index: a pure statistic -------------------------------------------------------------------
def test_anomaly_index_against_a_hand_computed_mad():
    norms = [3.0, 20.0, 22.0, 25.0, 18.0, 21.0, 30.0]
    # median 21; |deviations| 18, 1, 1, 4, 3, 0, 9 -> median 3; MAD = 1.4826 * 3
    expected = [d / (1.4826 * 3) for d in (18, 1, 1, 4, 3, 0, 9)]
    assert anomaly_index(norms) == pytest.approx(expected, rel=1e-12)
    assert flag_small_outliers(norms, 2.0) == [0]  # 30.0 scores 2.02 too, but lies above the median
    assert anomaly_index(norms)[6] > 2.0
    assert flag_small_outliers(norms, 4.1) == [] and flag_small_outliers(norms, 4.0) == [0]


def test_the_statistics_docstrings_run():
    for module in (scan_result, reverse_trigger):
        failed, attempted = doctest.testmod(module)
        assert attempted >= 2 and failed == 0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 5000), min_size=3, max_size=12, unique=True).map(lambda v: [i / 10 for i in v]),
    st.floats(0.1, 10.0),
    st.floats(-100.0, 100.0),
)
def test_anomaly_index_is_scale_and_shift_free_and_flags_only_small_outliers(norms, scale, shift):
    index = anomaly_index(norms)
    assert anomaly_index([scale * v + shift for v in norms]) == pytest.approx(index, rel=1e-6, abs=1e-6)
    median = statistics.median(norms)
    flagged = flag_small_outliers(norms, 2.0)
    assert all(norms[i] < median and index[i] > 2.0 for i in flagged)
    assert sorted(flagged) == [i for i, v in enumerate(norms) if v < median and index[i] > 2.0]
    assert statistics.median(index) <= 1.0 / 1.4826 + 1e-9  # half the points lie within one MAD


def test_anomaly_index_with_zero_mad_and_bad_norms():
    assert anomaly_index([4.0, 4.0, 4.0, 1.0]) == [0.0, 0.0, 0.0, math.inf]
    assert flag_small_outliers([4.0, 4.0, 4.0, 1.0]) == [3]
    with pytest.raises(UsageError, match="at least one norm"):
        anomaly_index([])
    with pytest.raises(UsageError, match="finite"):
        anomaly_index([1.0, math.nan])


# -- scans of real backdoored and clean models -------------------------------------------------------------
def test_digits_backdoor_target_is_the_one_flagged_and_its_trigger_works(digits_scan, digits_backdoor, digits):
    _, model = digits_backdoor
    r = digits_scan
    assert r.flagged == [DIGITS_TARGET]
    idx = dict(zip(r.classes, r.anomaly_index))
    assert idx[DIGITS_TARGET] > 2.0
    norm = dict(zip(r.classes, r.norms))
    others = [v for k, v in norm.items() if k != DIGITS_TARGET]
    assert norm[DIGITS_TARGET] < 0.5 * statistics.median(others)
    assert all(r.reached) and r.trigger_asr[r.classes.index(DIGITS_TARGET)] >= 0.95
    # on clean inputs the scan never saw (the clean training split), stamped through Trigger.apply
    assert stamped_success(r, DIGITS_TARGET, digits.x_train, digits.y_train, model) >= 0.9


def test_digits_clean_model_is_not_flagged(digits_mlp, digits):
    r = NeuralCleanse(**FAST).scan(digits_mlp, digits.x_test, digits.y_test)
    assert r.flagged == []
    below = [a for a, v in zip(r.anomaly_index, r.norms) if v < statistics.median(r.norms)]
    assert max(below) < 2.0
    assert all(r.reached) and min(r.trigger_asr) >= 0.9  # every class was really reverse-engineered


def test_mnist_badnets_target_needs_a_small_trigger_at_the_patch(mnist_pair_scan, badnets_mnist, mnist):
    _, model = badnets_mnist
    r = mnist_pair_scan
    norm = dict(zip(r.classes, r.norms))
    assert r.classes == [0, 3]
    assert norm[0] < 0.5 * norm[3]
    assert norm[0] < 40.0  # the planted trigger covers 9 pixels; a 28x28 mask starts near 392
    # the reversed mask sits on the planted patch: the bottom-right 6x6 corner holds most of its mass
    mask = r.masks[0][0]
    assert float(mask[-6:, -6:].sum()) > 0.5 * float(mask.sum())
    assert stamped_success(r, 0, mnist.x_test[200:], mnist.y_test[200:], model) >= 0.9


def test_a_class_is_reversed_the_same_whichever_classes_are_scanned_with_it(digits_backdoor, digits):
    _, model = digits_backdoor
    x, y = digits.x_test, digits.y_test
    pair = NeuralCleanse(steps=12, classes=[2, DIGITS_TARGET], seed=3).scan(model, x, y)
    alone = NeuralCleanse(steps=12, classes=[DIGITS_TARGET], seed=3).scan(model, x, y)
    assert pair.steps[1] == alone.steps[0]
    torch.testing.assert_close(pair.masks[1], alone.masks[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(pair.patterns[1], alone.patterns[0], atol=1e-4, rtol=1e-4)


# -- the result: JSON, pictures, a Trigger -----------------------------------------------------------------
def test_scan_result_to_dict_pictures_and_trigger(mnist_pair_scan, mnist, tmp_path):
    r = mnist_pair_scan
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert d["classes"] == [0, 3] and d["flagged"] == r.flagged and d["n_inputs"] == 200
    assert d["norms"] == pytest.approx(r.norms, abs=1e-4) and len(d["anomaly_index"]) == len(d["trigger_asr"]) == 2
    paths = r.save_triggers(tmp_path / "triggers", scale=2)
    assert [p.name for p in paths] == ["neural_cleanse_class_0.png", "neural_cleanse_class_3.png"]
    with Image.open(paths[0]) as im:
        assert im.size == (2 * (28 + 2 + 28), 2 * 28) and im.mode == "L"
        left = torch.from_numpy(np.asarray(im, dtype=np.float32))[::2, :56:2]
    torch.testing.assert_close(left, (r.masks[0][0] * 255).round(), atol=1.0, rtol=0)  # the mask's panel
    trig = r.as_trigger(0)
    assert isinstance(trig, Trigger) and trig.pattern.shape == (1, 28, 28)
    x = mnist.x_test[:5]
    m, p = r.masks[0], r.patterns[0]
    torch.testing.assert_close(trig.apply(x), ((1 - m) * x + m * p).clamp(0, 1))
    with pytest.raises(UsageError, match="was not scanned"):
        r.as_trigger(5)


def test_progress_is_reported_and_the_seed_fixes_the_scan(digits_mlp, digits):
    calls: list[tuple[int, int, str]] = []
    x, y = digits.x_test[:100], digits.y_test[:100]
    a = NeuralCleanse(steps=3, classes=[1, 4], seed=5).scan(
        digits_mlp, x, y, progress=lambda done, total, m: calls.append((done, total, m))
    )
    b = NeuralCleanse(steps=3, classes=[1, 4], generator=torch.Generator().manual_seed(5)).scan(digits_mlp, x, y)
    assert calls == [(1, 3, "1, 4 optimising"), (2, 3, "1, 4 optimising"), (3, 3, "1, 4 optimising")]
    torch.testing.assert_close(a.masks[0], b.masks[0])
    c = NeuralCleanse(steps=3, classes=[1, 4], seed=6).scan(digits_mlp, x, y)
    assert not torch.allclose(a.masks[0], c.masks[0])


# -- bad input ---------------------------------------------------------------------------------------------
def test_bad_models_and_inputs_raise_usage_errors(digits_mlp, digits, cancer_like):
    from blackbox_helpers import BlackBoxTorch

    x, y = digits.x_test[:50], digits.y_test[:50]
    black = BlackBoxTorch(digits_mlp.module, bounds=(0.0, 1.0), n_classes=10, input_shape=(1, 8, 8))
    with pytest.raises(UsageError, match="needs a white-box model"):
        NeuralCleanse().scan(black, x)
    with pytest.raises(UsageError, match=r"must be images \(C, H, W\)"):
        NeuralCleanse().scan(cancer_like, torch.rand(50, 30))
    with pytest.raises(UsageError, match="at least 20 clean inputs"):
        NeuralCleanse().scan(digits_mlp, x[:10])
    with pytest.raises(UsageError, match=r"classes \[10, 12\] are out of range"):
        NeuralCleanse(classes=[1, 10, 12]).scan(digits_mlp, x)
    with pytest.raises(UsageError, match="outside the model's bounds"):
        NeuralCleanse().scan(digits_mlp, x * 3)
    with pytest.raises(UsageError, match="expects"):
        NeuralCleanse().scan(digits_mlp, torch.rand(50, 1, 28, 28))
    with pytest.raises(UsageError, match="labels"):
        NeuralCleanse().scan(digits_mlp, x, y[:10])


@pytest.fixture
def cancer_like():
    """A real (untrained) torch classifier of 30-feature vectors: not an image model."""
    return TorchClassifier(torch.nn.Linear(30, 2), bounds=(0.0, 1.0), n_classes=2, input_shape=(30,))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, "steps must be a whole number >= 1"),
        ({"batch_size": 2.5}, "batch_size must be a whole number"),
        ({"batches_per_step": 0}, "batches_per_step must be a whole number >= 1 or None"),
        ({"lr": -0.1}, "lr must be a number greater than 0"),
        ({"init_cost": 0}, "init_cost must be a number greater than 0"),
        ({"attack_success_threshold": 1.5}, r"attack_success_threshold must be a number in \(0, 1\]"),
        ({"cost_multiplier": 1.0}, "cost_multiplier must be a number greater than 1"),
        ({"threshold": math.inf}, "threshold must be a number greater than 0"),
        ({"early_stop": "yes"}, "early_stop must be True or False"),
        ({"classes": []}, "classes must be a non-empty list of distinct class indices"),
        ({"classes": [1, 1]}, "classes must be a non-empty list of distinct class indices"),
        ({"classes": [-1]}, "classes must be a non-empty list of distinct class indices"),
        ({"seed": "0"}, "seed must be an integer or None"),
        ({"generator": 3}, "generator must be a torch.Generator or None"),
    ],
)
def test_bad_configuration_raises_usage_error(kwargs, match):
    with pytest.raises(UsageError, match=match):
        NeuralCleanse(**kwargs)


def test_repr_shows_the_full_configuration():
    text = repr(NeuralCleanse(classes=[0, 3], seed=1))
    for part in (
        "steps=80",
        "batches_per_step=4",
        "lr=0.1",
        "init_cost=0.001",
        "cost_multiplier=1.5",
        "threshold=2.0",
        "classes=[0, 3]",
    ):
        assert part in text


# -- the numbers: full 10-class scans of mnist-cnn --------------------------------------------------
@pytest.mark.slow
def test_mnist_badnets_full_scan_flags_the_target(badnets_mnist, mnist):
    _, model = badnets_mnist
    r = NeuralCleanse().scan(model, mnist.x_test[:500], mnist.y_test[:500])
    assert r.flagged == [0]
    assert r.anomaly_index[0] > 2.0
    assert stamped_success(r, 0, mnist.x_test[500:], mnist.y_test[500:], model) >= 0.9


@pytest.mark.slow
def test_mnist_clean_full_scan_flags_nothing(mnist_cnn, mnist):
    r = NeuralCleanse().scan(mnist_cnn, mnist.x_test[:500], mnist.y_test[:500])
    assert r.flagged == []


def test_backdoor_probe_flags_the_target_and_not_the_clean_model(digits_backdoor, digits_mlp, digits, tmp_path):
    from bastion.audit import run_audit
    from bastion.audit.profiles import Profile

    prof = Profile("t", "t", 0, {"backdoor": {"steps": FAST["steps"]}})
    _, model = digits_backdoor
    report = run_audit(model, digits, tmp_path / "bad", profile=prof, gates=["backdoor_flagged<=0"])
    (p,) = report["probes"]
    assert p["status"] == "ok" and p["risk"] == "high", p.get("summary")
    assert p["metrics"]["backdoor_flagged"] == 1 and p["metrics"][f"anomaly_index[{DIGITS_TARGET}]"] > 2
    assert f"class {DIGITS_TARGET} flagged" in p["summary"] and report["verdict"]["gates"] == "fail"
    assert {c["id"]: c["status"] for c in p["checks"]} == {"reversed-triggers-work": "pass"}
    assert p["examples"] and all(e["pred_adv"] == DIGITS_TARGET for e in p["examples"])
    assert "Backdoor scan" in (tmp_path / "bad" / "index.html").read_text()
    clean = run_audit(digits_mlp, digits, tmp_path / "clean", profile=prof)["probes"][0]
    assert clean["risk"] != "high" and clean["metrics"]["backdoor_flagged"] == 0
    assert clean["metrics"]["max_anomaly_index"] < 2
