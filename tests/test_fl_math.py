"""The numpy math of bastion.federated: FLTrust and norm clipping against slow loop references, their properties,
and the update attacks (closed forms, the min-max / min-sum boundary against a brute-force search, validation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from bastion.errors import UsageError
from bastion.federated.aggregators import fltrust, norm_clip
from bastion.federated.attacks import (
    ALIE,
    DATA_ATTACKS,
    IPM,
    UPDATE_ATTACKS,
    GaussianNoise,
    MinMax,
    MinSum,
    SignFlip,
    alie_z,
    attack_names,
    craft_update_attack,
)

# -- slow references -------------------------------------------------------------------------------------------


def fltrust_loop(updates: np.ndarray, g0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n0 = math.sqrt(sum(float(v) ** 2 for v in g0))
    trust, total, acc = [], 0.0, np.zeros(len(g0))
    for g in updates:
        ng = math.sqrt(sum(float(v) ** 2 for v in g))
        ts = 0.0 if ng == 0 or n0 == 0 else max(0.0, sum(float(a) * float(b) for a, b in zip(g, g0)) / (ng * n0))
        trust.append(ts)
        if ts > 0:
            acc += ts * (n0 / ng) * g
            total += ts
    return (acc / total if total > 0 else np.zeros(len(g0))), np.array(trust)


def norm_clip_loop(updates: np.ndarray, weights: list[float] | None, bound: float) -> tuple[np.ndarray, np.ndarray]:
    weights = [1.0] * len(updates) if weights is None else list(weights)
    acc, scales = np.zeros(updates.shape[1]), []
    for g, w in zip(updates, weights):
        s = min(1.0, bound / math.sqrt(sum(float(v) ** 2 for v in g))) if g.any() else 1.0
        scales.append(s)
        acc += w * s * g
    return acc / sum(weights), np.array(scales)


def minmax_ok(benign: np.ndarray, m: np.ndarray) -> bool:
    diameter = max(np.linalg.norm(a - b) for a in benign for b in benign)
    return max(np.linalg.norm(m - b) for b in benign) <= diameter * (1 + 1e-9)


def minsum_ok(benign: np.ndarray, m: np.ndarray) -> bool:
    worst = max(sum(np.linalg.norm(a - b) ** 2 for b in benign) for a in benign)
    return sum(np.linalg.norm(m - b) ** 2 for b in benign) <= worst * (1 + 1e-9)


def direction(benign: np.ndarray, perturbation: str) -> np.ndarray:
    mean = benign.mean(axis=0)
    return {"unit": -mean / np.linalg.norm(mean), "sign": -np.sign(mean), "std": -benign.std(axis=0, ddof=1)}[
        perturbation
    ]


def grid_boundary(ok, hi: float, width: float) -> float:
    """The largest feasible gamma in [0, hi] by repeated 101-point grids, asserting the feasible set is [0, γ*]."""
    lo = 0.0
    while hi - lo > width:
        grid = np.linspace(lo, hi, 101)
        flags = [ok(g) for g in grid]
        last = max(i for i, f in enumerate(flags) if f)
        assert all(flags[: last + 1]) and not any(flags[last + 1 :]), "the constraint's feasible set is not monotone"
        if last == len(grid) - 1:
            return hi
        lo, hi = grid[last], grid[last + 1]
    return lo


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# -- FLTrust ---------------------------------------------------------------------------------------------------


def test_fltrust_matches_loop_reference(rng):
    updates, g0 = rng.normal(size=(9, 17)), rng.normal(size=17)
    updates[3] = 0.0  # zero-norm update: trust 0
    agg, trust = fltrust(updates, g0)
    ref_agg, ref_trust = fltrust_loop(updates, g0)
    assert trust[3] == 0.0 and (trust > 0).sum() >= 2
    np.testing.assert_allclose(trust, ref_trust, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(agg, ref_agg, rtol=1e-10, atol=1e-12)
    assert agg.shape == (17,) and agg.dtype == np.float64


def test_fltrust_all_negative_cosines_or_zero_server_update_give_zero(rng):
    g0 = rng.normal(size=11)
    updates = -np.abs(rng.normal(size=(5, 1))) * g0 + 0.01 * rng.normal(size=(5, 11))
    agg, trust = fltrust(updates, g0)
    assert (trust == 0).all() and (agg == 0).all()
    np.testing.assert_array_equal(agg, fltrust_loop(updates, g0)[0])
    agg, trust = fltrust(rng.normal(size=(4, 11)), np.zeros(11))
    assert (trust == 0).all() and (agg == 0).all()


def test_fltrust_norm_bound_negation_and_scale_invariance(rng):
    for _ in range(20):
        updates, g0 = rng.normal(size=(8, 25)), rng.normal(size=25) * rng.uniform(0.1, 10)
        agg, _ = fltrust(updates, g0)
        assert np.linalg.norm(agg) <= np.linalg.norm(g0) * (1 + 1e-12)
    updates, g0 = rng.normal(size=(6, 25)) + 0.5, np.full(25, 0.3)
    agg, trust = fltrust(updates, g0)
    with_negation, trust2 = fltrust(np.vstack([updates, -5 * g0]), g0)
    assert trust2[-1] == 0.0
    np.testing.assert_allclose(with_negation, agg, rtol=1e-12)
    boosted = updates.copy()
    boosted[2] *= 1000.0
    np.testing.assert_allclose(fltrust(boosted, g0)[0], agg, rtol=1e-10)
    np.testing.assert_allclose(fltrust(boosted, g0)[1], trust, rtol=1e-10)


def test_fltrust_keeps_float32():
    agg, trust = fltrust(np.ones((3, 4), dtype=np.float32), np.ones(4, dtype=np.float32))
    assert agg.dtype == np.float32 and trust.dtype == np.float64
    np.testing.assert_allclose(agg, np.ones(4), rtol=1e-6)


# -- norm clipping ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", [None, [3.0, 1.0, 0.0, 2.0, 5.0, 1.0, 4.0]])
def test_norm_clip_matches_loop_reference(rng, weights):
    updates = rng.normal(size=(7, 19)) * rng.uniform(0.05, 3.0, size=(7, 1))
    updates[1] = 0.0
    agg, scales = norm_clip(updates, None if weights is None else np.array(weights), bound=2.0)
    ref_agg, ref_scales = norm_clip_loop(updates, weights, 2.0)
    assert (scales < 1).any() and (scales == 1).any()
    np.testing.assert_allclose(scales, ref_scales, rtol=1e-12)
    np.testing.assert_allclose(agg, ref_agg, rtol=1e-10, atol=1e-12)


def test_norm_clip_noise_comes_from_the_rng(rng):
    updates = rng.normal(size=(5, 1000))
    clean, _ = norm_clip(updates, bound=1.0)
    noisy, _ = norm_clip(updates, bound=1.0, sigma=0.5, rng=np.random.default_rng(7))
    np.testing.assert_allclose(noisy - clean, np.random.default_rng(7).normal(0.0, 0.5, 1000), rtol=1e-9, atol=1e-12)
    again, _ = norm_clip(updates, bound=1.0, sigma=0.5, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(noisy, again)


def test_norm_clip_output_norm_within_bound(rng):
    for _ in range(20):
        bound = float(rng.uniform(0.1, 5))
        updates = rng.normal(size=(6, 30)) * rng.uniform(0.01, 10, size=(6, 1))
        agg, scales = norm_clip(updates, rng.uniform(0, 1, 6), bound=bound)
        assert np.linalg.norm(agg) <= bound * (1 + 1e-12)
        assert (np.linalg.norm(updates * scales[:, None], axis=1) <= bound * (1 + 1e-12)).all()


def test_aggregators_refuse_bad_input(rng):
    good = rng.normal(size=(4, 6))
    nan = good.copy()
    nan[2, 3] = np.nan
    with pytest.raises(UsageError, match=r"row\(s\) 2 "):
        fltrust(nan, good[0])
    with pytest.raises(UsageError, match=r"row\(s\) 2 "):
        norm_clip(nan, bound=1.0)
    bad_calls = [
        lambda: fltrust(good[0], good[0]),  # 1-D updates
        lambda: fltrust(good, good[0, :5]),  # d mismatch
        lambda: fltrust(good, np.full(6, np.inf)),
        lambda: fltrust(good.astype(int), good[0]),
        lambda: norm_clip(good, bound=0.0),
        lambda: norm_clip(good, bound=float("nan")),
        lambda: norm_clip(good, bound=1.0, sigma=-1.0),
        lambda: norm_clip(good, bound=1.0, sigma=0.1),  # no rng
        lambda: norm_clip(good, np.ones(3), bound=1.0),
        lambda: norm_clip(good, np.array([1.0, -1.0, 1.0, 1.0]), bound=1.0),
        lambda: norm_clip(good, np.zeros(4), bound=1.0),
        lambda: norm_clip(good[:0], bound=1.0),
    ]
    for call in bad_calls:
        with pytest.raises(UsageError):
            call()


# -- attacks ---------------------------------------------------------------------------------------------------


@pytest.fixture
def benign(rng) -> np.ndarray:
    return rng.normal(loc=0.4, scale=1.0, size=(10, 30))


def test_registry_names_and_flags():
    assert set(UPDATE_ATTACKS) == {"sign-flip", "gaussian", "alie", "ipm", "min-max", "min-sum"}
    assert attack_names() == sorted([*DATA_ATTACKS, *UPDATE_ATTACKS])
    assert {"label-flip", "backdoor"} <= set(attack_names())
    assert not GaussianNoise.omniscient and all(UPDATE_ATTACKS[n].omniscient for n in UPDATE_ATTACKS if n != "gaussian")
    assert SignFlip.name == "sign-flip" and MinSum.name == "min-sum"


def test_defaults_kept_and_shown():
    assert SignFlip().params() == {"boost": 4.0}
    assert GaussianNoise().params() == {"sigma": 200.0}
    assert ALIE().params() == {"z": None} and IPM().params() == {"epsilon": 0.5}
    assert MinMax().params() == {"perturbation": "std", "gamma_init": 50.0, "tol": 1e-5} == MinSum().params()
    assert repr(craft_update_attack("min-max", perturbation="sign")) == (
        "MinMax(perturbation='sign', gamma_init=50.0, tol=1e-05)"
    )


@pytest.mark.parametrize("name", sorted(UPDATE_ATTACKS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shapes_and_dtypes(benign, name, dtype):
    out = craft_update_attack(name).craft(benign.astype(dtype), 3, np.random.default_rng(0))
    assert out.shape == (3, 30) and out.dtype == dtype and np.isfinite(out).all()
    assert craft_update_attack(name).craft(benign.astype(dtype), 0, np.random.default_rng(0)).shape == (0, 30)
    if name != "gaussian":
        assert (out == out[0]).all()  # the colluding clients send the same update


def test_sign_flip_and_ipm(benign, rng):
    mean = benign.mean(axis=0)
    np.testing.assert_allclose(SignFlip().craft(benign, 2, rng), np.tile(-4.0 * mean, (2, 1)), rtol=1e-12)
    ipm = IPM().craft(benign, 2, rng)
    np.testing.assert_allclose(ipm[0], -0.5 * mean, rtol=1e-12)
    assert float(ipm[0] @ mean) < 0


def test_gaussian_uses_the_rng(benign):
    a = GaussianNoise().craft(benign, 20, np.random.default_rng(1))
    b = GaussianNoise().craft(benign, 20, np.random.default_rng(1))
    c = GaussianNoise().craft(benign, 20, np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert abs(a.std() / 200.0 - 1) < 0.1 and abs(a.mean()) < 30


def test_alie_z_closed_form(rng):
    n, m = 20, 4
    s = math.floor(n / 2 + 1) - m
    assert s == 7
    expected = norm.ppf((n - s) / n)
    assert abs(expected - 0.385) < 1e-3
    assert alie_z(n, m) == pytest.approx(expected, rel=1e-12)
    benign = rng.normal(size=(n - m, 12))
    attack = ALIE()
    out = attack.craft(benign, m, rng)
    assert attack.z_ == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(out[0], benign.mean(0) - expected * benign.std(0, ddof=0), rtol=1e-12)
    assert alie_z(10, 6) == 1.0  # s <= 0: the fallback
    fixed = ALIE(z=2.0)
    np.testing.assert_allclose(fixed.craft(benign, 1, rng)[0], benign.mean(0) - 2.0 * benign.std(0), rtol=1e-12)


@pytest.mark.parametrize("cls, ok", [(MinMax, minmax_ok), (MinSum, minsum_ok)])
@pytest.mark.parametrize("perturbation", ["unit", "sign", "std"])
def test_agr_agnostic_finds_the_constraint_boundary(benign, cls, ok, perturbation):
    attack = cls(perturbation=perturbation)
    out = attack.craft(benign, 2, np.random.default_rng(0))
    gamma = attack.gamma_
    p, mean = direction(benign, perturbation), benign.mean(axis=0)
    assert 0 < gamma < 2 * attack.gamma_init
    np.testing.assert_allclose(out[0], mean + gamma * p, rtol=1e-12)
    assert ok(benign, out[0])
    assert not ok(benign, mean + (gamma * (1 + 1e-3) + 1e-3) * p)
    boundary = grid_boundary(lambda g: ok(benign, mean + g * p), 2 * attack.gamma_init, attack.tol / 10)
    # the reference stopping rule leaves at most about one final step (< 2 tol) between the last success and γ*
    assert boundary - 2 * attack.tol <= gamma <= boundary + attack.tol / 10


def test_agr_agnostic_degenerate_inputs(rng):
    one = rng.normal(size=(1, 5))
    attack = MinMax()
    np.testing.assert_allclose(attack.craft(one, 2, rng), np.tile(one, (2, 1)), atol=1e-12)
    same = np.tile(rng.normal(size=5), (4, 1))  # std direction is zero: every gamma is feasible, m = mean
    np.testing.assert_allclose(MinSum().craft(same, 1, rng)[0], same[0], rtol=1e-12)


def test_unknown_attack_and_bad_params(benign, rng):
    with pytest.raises(UsageError, match="did you mean 'min-max'"):
        craft_update_attack("min-maxx")
    with pytest.raises(UsageError, match="accepts epsilon"):
        craft_update_attack("ipm", eps=1.0)
    bad = [
        lambda: SignFlip(boost=-1.0),
        lambda: SignFlip(boost=True),
        lambda: GaussianNoise(sigma=0),
        lambda: ALIE(z=float("nan")),
        lambda: IPM(epsilon="0.5"),
        lambda: MinMax(perturbation="gradient"),
        lambda: MinSum(tol=0.0),
        lambda: MinMax(gamma_init=float("inf")),
        lambda: alie_z(5, 6),
        lambda: SignFlip().craft(benign, -1, rng),
        lambda: SignFlip().craft(benign[0], 1, rng),
        lambda: SignFlip().craft(benign[:0], 1, rng),
        lambda: SignFlip().craft(np.where(benign > 2, np.nan, benign), 1, rng),
        lambda: GaussianNoise().craft(benign, 1, None),
    ]
    for call in bad:
        with pytest.raises(UsageError):
            call()
    with pytest.raises(TypeError):
        SignFlip(4.0)  # keyword-only
