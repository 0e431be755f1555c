"""Output policies against model extraction (bastion.defenses.extraction): every registered policy keeps the label on
top and returns valid rows (hypothesis, on random and near-tied probability rows); reverse sigmoid against a scalar
reference of Lee et al.'s formula; MAD within its L1 ball, against a brute-force oracle, and turning the surrogate's
gradient further than a random argmax-keeping perturbation of the same size; utility costs in closed form; the
defended victim as a Classifier. Models: the zoo digits-mlp (victim and surrogate) on digits test images."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.defenses.extraction import (
    OUTPUT_POLICIES,
    LabelOnly,
    NoPolicy,
    PolicyClassifier,
    PredictionPoisoning,
    ReverseSigmoid,
    Rounding,
    TopK,
    angular_deviation,
    get_output_policy,
    initialised_like,
    mad_target,
    surrogate_gram,
    utility_cost,
)
from bastion.errors import UsageError

RAN: dict[str, int] = {}


def test_every_registered_policy_is_covered():
    assert set(OUTPUT_POLICIES) == {"none", "round", "top-k", "label-only", "reverse-sigmoid", "prediction-poisoning"}


@st.composite
def prob_rows(draw):
    """(N, K) probability rows from random logits, some very confident, some with near-ties at the top."""
    n, k = draw(st.integers(1, 6)), draw(st.integers(2, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    scale = draw(st.sampled_from([0.01, 1.0, 5.0, 30.0]))
    z = torch.randn(n, k, generator=g, dtype=torch.float64) * scale
    if draw(st.booleans()):  # a near-tie between the two largest logits
        top2 = z.topk(2, dim=1).indices
        z.scatter_(1, top2[:, 1:], z.gather(1, top2[:, :1]) - draw(st.sampled_from([0.0, 1e-9, 1e-4])))
    return torch.softmax(z, dim=1)


@st.composite
def simple_policies(draw):
    name = draw(st.sampled_from(["none", "round", "top-k", "label-only", "reverse-sigmoid"]))
    params = {
        "none": {},
        "round": {"decimals": draw(st.integers(0, 4))},
        "top-k": {"k": draw(st.integers(1, 12)), "renormalize": draw(st.booleans())},
        "label-only": {},
        "reverse-sigmoid": {
            "beta": draw(st.floats(0.05, 10.0)),
            "gamma": draw(st.floats(0.01, 5.0)),
        },
    }[name]
    return get_output_policy(name, **params)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(probs=prob_rows(), policy=simple_policies())
def test_every_policy_keeps_the_label_on_top_and_returns_valid_rows(probs, policy):
    out = policy(probs)
    n, k = probs.shape
    label = probs.argmax(1)
    assert out.shape == probs.shape and out.dtype == probs.dtype and bool(torch.isfinite(out).all())
    assert float(out.min()) >= 0
    top = out.gather(1, label[:, None])[:, 0]
    others = out.scatter(1, label[:, None], -1.0).max(1).values
    if isinstance(policy, Rounding):
        # monotone: the label keeps the largest value (ties allowed); values on the grid; sums within half a step
        assert bool((top >= others).all())
        step = 10.0**-policy.decimals
        assert torch.allclose(out / step, (out / step).round(), atol=1e-6)
        assert float((out - probs).abs().max()) <= step / 2 + 1e-12
        assert float((out.sum(1) - 1).abs().max()) <= k * step / 2 + 1e-9
    else:
        raw_strict = probs.gather(1, label[:, None])[:, 0] > probs.scatter(1, label[:, None], -1.0).max(1).values
        ties_kept = isinstance(policy, NoPolicy | TopK) & ~raw_strict  # these two pass a tie through
        assert bool(((top > others) | (ties_kept & (top >= others))).all()), (policy, probs, out)  # strictly on top
        if isinstance(policy, TopK) and not policy.renormalize:
            assert bool((out.sum(1) <= 1 + 1e-9).all())
        else:
            assert torch.allclose(out.sum(1), torch.ones(n, dtype=out.dtype), atol=1e-9)
    if isinstance(policy, TopK):
        assert bool(((out > 0).sum(1) <= policy.k).all())
        kept = out > 0
        if not policy.renormalize:
            assert torch.equal(out[kept], probs[kept])
    if isinstance(policy, LabelOnly):
        assert torch.equal(out, torch.nn.functional.one_hot(label, k).to(out.dtype))
    if isinstance(policy, NoPolicy):
        assert torch.equal(out, probs)
    RAN[policy.name] = RAN.get(policy.name, 0) + 1


def test_the_property_ran_for_every_simple_policy():
    assert set(RAN) == {"none", "round", "top-k", "label-only", "reverse-sigmoid"}, RAN
    assert all(v >= 40 for v in RAN.values()), RAN


def _reverse_sigmoid_reference(row: list[float], beta: float, gamma: float) -> list[float]:
    """Lee et al.'s Eq. 3-4 one value at a time (ART's clipping inside the logit and of negative results)."""
    vals = []
    for y in row:
        yc = min(max(y, 1e-9), 1 - 1e-9)
        r = beta * (1 / (1 + math.exp(-gamma * math.log(yc / (1 - yc)))) - 0.5)
        vals.append(max(y - r, 0.0))
    total = sum(vals)
    return [v / total for v in vals]


@pytest.mark.parametrize("beta,gamma", [(0.5, 0.1), (1.0, 0.1), (3.0, 0.5), (8.0, 0.05)])
def test_reverse_sigmoid_matches_the_scalar_formula_and_only_enforces_the_label(beta, gamma):
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(300, 10, generator=g, dtype=torch.float64) * 6, dim=1)
    out = ReverseSigmoid(beta=beta, gamma=gamma)(probs)
    ref = torch.tensor([_reverse_sigmoid_reference(r, beta, gamma) for r in probs.tolist()], dtype=torch.float64)
    label = probs.argmax(1)
    flipped = ref.argmax(1) != label
    assert torch.allclose(out[~flipped], ref[~flipped], atol=1e-12)
    # where the formula would move the label, the row is the reference mixed with the label's one-hot, just enough
    onehot = torch.nn.functional.one_hot(label, 10).double()
    for i in flipped.nonzero()[:, 0].tolist():
        a = (out[i][label[i]] - ref[i][label[i]]) / (1 - ref[i][label[i]])
        assert torch.allclose(out[i], (1 - a) * ref[i] + a * onehot[i], atol=1e-12)
        gap = out[i][label[i]] - out[i].scatter(0, label[i : i + 1], -1.0).max()
        assert abs(float(gap) - ReverseSigmoid.MARGIN) < 1e-9
    if beta == 8.0:  # the enforcement above really ran
        assert int(flipped.sum()) > 10


def test_reverse_sigmoid_raw_formula_can_flip_the_label_and_the_policy_does_not():
    probs = torch.tensor([[0.99] + [0.01 / 9] * 9], dtype=torch.float64)
    ref = torch.tensor([_reverse_sigmoid_reference(probs[0].tolist(), 5.0, 0.1)])
    assert int(ref.argmax()) != 0  # the raw formula hands the top place to another class
    assert int(ReverseSigmoid(beta=5.0, gamma=0.1)(probs).argmax()) == 0


def test_policies_refuse_bad_parameters_and_inputs():
    with pytest.raises(UsageError, match="decimals must be an integer >= 0"):
        Rounding(decimals=-1)
    with pytest.raises(UsageError, match="k must be an integer >= 1"):
        TopK(k=0)
    with pytest.raises(UsageError, match="beta must be a number >= 0"):
        ReverseSigmoid(beta=-1.0)
    with pytest.raises(UsageError, match="beta and gamma must be positive"):
        ReverseSigmoid(gamma=0.0)
    with pytest.raises(UsageError, match=r"epsilon must be a number in \(0, 2\]"):
        PredictionPoisoning(epsilon=3.0, surrogate=torch.nn.Linear(2, 2))
    with pytest.raises(UsageError, match="needs surrogate="):
        PredictionPoisoning(epsilon=0.1)
    with pytest.raises(UsageError, match="apply softmax"):
        Rounding()(torch.tensor([[2.0, -1.0]]))
    with pytest.raises(UsageError, match="needs the inputs x"):
        PredictionPoisoning(surrogate=torch.nn.Linear(2, 2))(torch.tensor([[0.5, 0.5]]))
    with pytest.raises(UsageError, match="unknown output policy 'rounding'"):
        get_output_policy("rounding")


# -- MAD -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def thief(digits_mlp):
    """The surrogate: digits-mlp's architecture freshly initialised (the thief's model as its training starts)."""
    return initialised_like(digits_mlp, seed=0)


@pytest.fixture(scope="module")
def digits_probs(digits, digits_mlp):
    x = digits.x_test[:120]
    with torch.no_grad():
        probs = torch.softmax(digits_mlp.logits(x).double(), dim=1)
    return x, probs


def test_mad_oracle_matches_a_brute_force_search_over_vertex_sets(thief, digits_probs):
    x, probs = digits_probs
    eps = 0.5
    gram = surrogate_gram(thief, x[:6], layers="all")
    target = mad_target(gram, probs[:6], eps)
    for i in range(6):
        k = int(probs[i].argmax())
        best, best_v = -1.0, None
        for bits in itertools.product((0.0, 1.0), repeat=10):
            if not bits[k]:
                continue
            v = torch.tensor(bits, dtype=torch.float64)
            v[k] += 1e-5
            v /= v.sum()
            a = min(1.0, eps / float((v - probs[i]).abs().sum()))
            yt = (1 - a) * probs[i] + a * v
            u, w = gram[i] @ yt, gram[i] @ probs[i]
            val = 2 - 2 * float(yt @ w) / math.sqrt(float(yt @ u) * float(probs[i] @ w))
            if val > best:
                best, best_v = val, v
        assert torch.allclose(target[i], best_v, atol=1e-12)


@pytest.mark.parametrize("layers", ["last", "all"])
def test_mad_stays_in_its_ball_keeps_the_label_and_turns_the_gradient_more_than_random(thief, digits_probs, layers):
    x, probs = digits_probs
    eps = 0.5
    out = PredictionPoisoning(epsilon=eps, surrogate=thief, layers=layers)(probs, x)
    l1 = (out - probs).abs().sum(1)
    assert float(l1.max()) <= eps + 1e-9
    assert float(l1.mean()) > 0.9 * eps  # it uses its budget (a no-op policy fails here)
    assert torch.allclose(out.sum(1), torch.ones(len(out), dtype=out.dtype)) and float(out.min()) >= 0
    label = probs.argmax(1)
    assert bool((out.gather(1, label[:, None])[:, 0] > out.scatter(1, label[:, None], -1.0).max(1).values).all())
    # the same L1 budget spent towards a random vertex set that keeps the label
    g = torch.Generator().manual_seed(0)
    sets = (torch.rand(probs.shape, generator=g) < 0.5).double().scatter(1, label[:, None], 1.0)
    rand = (sets + 1e-5 * torch.nn.functional.one_hot(label, 10)) / (sets.sum(1, keepdim=True) + 1e-5)
    a = (eps / (rand - probs).abs().sum(1, keepdim=True)).clamp(max=1.0)
    random_out = (1 - a) * probs + a * rand
    gram = surrogate_gram(thief, x, layers=layers)
    mad_dev = angular_deviation(gram, probs, out)
    rand_dev = angular_deviation(gram, probs, random_out)
    assert bool((mad_dev >= rand_dev - 1e-9).all())  # per input: the random vertex set is one of the candidates
    assert float(mad_dev.mean()) > 3 * float(rand_dev.mean()), (float(mad_dev.mean()), float(rand_dev.mean()))


def test_mad_greedy_oracle_beyond_ten_classes_keeps_the_label():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 12))
    x = torch.randn(20, 5)
    probs = torch.softmax(torch.randn(20, 12, dtype=torch.float64) * 3, dim=1)  # a victim other than the surrogate
    out = PredictionPoisoning(epsilon=1.0, surrogate=model)(probs, x)
    label = probs.argmax(1)
    assert torch.equal(out.argmax(1), label)
    assert float((out - probs).abs().sum(1).max()) <= 1.0 + 1e-9
    gram = surrogate_gram(model, x)
    best = angular_deviation(gram, probs, out)
    # greedy: at least as good as {label} plus any one class, the first step it searches
    for j in range(12):
        v = torch.nn.functional.one_hot(label, 12).double() * (1 + 1e-5)
        v[:, j] = torch.maximum(v[:, j], torch.ones(20, dtype=torch.float64))
        v /= v.sum(1, keepdim=True)
        a = (1.0 / (v - probs).abs().sum(1, keepdim=True)).clamp(max=1.0)
        assert bool((best >= angular_deviation(gram, probs, (1 - a) * probs + a * v) - 1e-9).all())


# -- utility and the defended victim ---------------------------------------------------------------------------
def test_utility_cost_reports_label_agreement_and_calibration_loss(digits, thief, digits_probs):
    x, probs = digits_probs
    y = digits.y_test[:120]
    none = utility_cost(NoPolicy(), probs, y)
    assert none["label_agreement"] == 1.0 and none["l1"] == 0.0 and none["ece_change"] == 0.0
    assert none["nll_change"] == 0.0
    only = utility_cost(LabelOnly(), probs, y)
    assert only["label_agreement"] == 1.0
    assert only["l1"] == pytest.approx(float((2 * (1 - probs.max(1).values)).mean()), abs=1e-12)  # |e_k - p|_1
    acc = float((probs.argmax(1) == y).double().mean())
    assert only["ece_after"] == pytest.approx(1 - acc, abs=1e-12)  # confidence 1 everywhere
    rs = utility_cost(ReverseSigmoid(beta=1.0, gamma=0.1), probs, y)
    assert rs["label_agreement"] == 1.0 and rs["accuracy"] == pytest.approx(acc)
    assert rs["nll_change"] > 0.1 and rs["l1"] > 0.5  # the deception costs calibration
    mad = utility_cost(PredictionPoisoning(epsilon=0.3, surrogate=thief), probs, y, x=x)
    assert mad["label_agreement"] == 1.0 and mad["max_l1"] <= 0.3 + 1e-9


def test_policy_classifier_answers_through_the_policy(digits, digits_mlp, thief):
    x = digits.x_test[:50]
    victim_probs = digits_mlp.proba(x).double()
    rounded = PolicyClassifier(digits_mlp, Rounding(decimals=1))
    assert rounded.output == "probabilities" and not rounded.label_only
    assert torch.allclose(rounded.logits(x).double(), Rounding(decimals=1)(victim_probs), atol=1e-6)
    assert rounded.n_queries == 50
    only = PolicyClassifier(digits_mlp, LabelOnly())
    assert only.label_only and torch.equal(only.predict(x), digits_mlp.predict(x))
    assert set(only.logits(x).unique().tolist()) == {0.0, 1.0}
    mad = PolicyClassifier(digits_mlp, PredictionPoisoning(epsilon=0.5, surrogate=thief))
    assert torch.equal(mad.predict(x), digits_mlp.predict(x))
    assert not torch.allclose(mad.proba(x).double(), victim_probs, atol=1e-3)
    with pytest.raises(UsageError, match="policy must be an OutputPolicy"):
        PolicyClassifier(digits_mlp, "round")  # type: ignore[arg-type]
