"""The input-drift monitor on real data: penultimate features of the zoo mnist-cnn (MMD) and the breast-cancer
table (per-feature KS with Benjamini-Hochberg).

Data: the reference is the (pooled, 128-d) penultimate features of mnist5k training images 0-999; clean traffic
is the 1,000 test images in a seeded random order (10 distinct windows of 100; the monitor's null hypothesis is
i.i.d. traffic, and the stored test order is not a random draw of traffic: its first 100 images hold 23 zeros);
shifted traffic is test images with Gaussian noise (sigma 0.3, clipped to [0, 1]) or rotated by 40 degrees.
Measured here (2 shared CPU cores): clean windows p = 0.15-0.71 (no alarm at alpha = 0.01; over 4 other test
orders 0.012-0.95), noisy and rotated traffic alarm in the first window after the switch with p = 1/501 (the
smallest attainable; MMD^2 0.025 / 0.055 against <= 0.002 for clean windows), 0.1-0.4 s per MMD window (700-1,100
pooled rows, d = 128, 500 permutations); under the null 0/40 rejections at 0.05, mean p 0.51.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from sklearn.datasets import load_breast_cancer
from statsmodels.stats.multitest import multipletests

from bastion.defenses.detection import MahalanobisDetector
from bastion.errors import UsageError
from bastion.serve import drift
from bastion.serve.drift import DriftMonitor, adjust_pvalues, gaussian_kernel, mmd2_split_statistics, mmd2_unbiased

WINDOW = 100
ALPHA = 0.01


def _rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]], dtype=x.dtype)
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)


@pytest.fixture(scope="module")
def feats(mnist, mnist_cnn):
    """Penultimate features: reference (train 0-999), null traffic (train 1000-2999), clean/noisy/rotated test."""
    torch.set_num_threads(2)
    det = MahalanobisDetector().fit(mnist_cnn, mnist.x_train[:200], mnist.y_train[:200])
    order = torch.randperm(mnist.x_test.shape[0], generator=torch.Generator().manual_seed(0))
    x_test = mnist.x_test[order]
    noise = torch.randn(x_test[:200].shape, generator=torch.Generator().manual_seed(1))
    return {
        "reference": det.features(mnist.x_train[:1000]),
        "train_rest": det.features(mnist.x_train[1000:3000]),
        "clean": det.features(x_test),
        "noise": det.features((x_test[:200] + 0.3 * noise).clamp(0.0, 1.0)),
        "rotate": det.features(_rotate(x_test[200:400], 40.0)),
    }


# --- images: MMD on penultimate features ---------------------------------------------------------------------


def test_clean_traffic_raises_no_alarm_over_ten_windows(feats):
    # Each clean window is a false alarm with probability <= alpha = 0.01, so 10 windows expect 0.1 false alarms
    # (P[any] <= 1 - 0.99^10 ~ 0.096, a Bonferroni-style bound): one alarm here would mean a miscalibrated test.
    mon = DriftMonitor(feats["reference"], window=WINDOW, alpha=ALPHA, permutations=500, seed=0)
    assert mon.dim == 128 and mon.bandwidth is not None and mon.bandwidth > 0
    results = mon.observe(feats["clean"][:450]) + mon.observe(feats["clean"][450:])  # windows span the two calls
    p = [r["p_value"] for r in results]
    print("clean-window p-values:", [round(v, 3) for v in p])
    assert [r["window"] for r in results] == list(range(10)) and mon.pending == 0
    assert not any(r["drift"] for r in results), p
    assert all(r["test"] == "mmd" and r["n"] == WINDOW and r["alpha"] == ALPHA for r in results)
    assert all(abs(v * 501 - round(v * 501)) < 1e-9 and v >= 1 / 501 for v in p)  # p = (count + 1) / 501
    assert mon.history == results
    # clean traffic is not always "very similar": a never-varying p (a stub) would not look like this
    assert max(p) - min(p) > 0.2


@pytest.mark.parametrize("shift", ["noise", "rotate"])
def test_shifted_traffic_raises_drift_within_two_windows(feats, shift):
    mon = DriftMonitor(feats["reference"], window=WINDOW, alpha=ALPHA, permutations=500, seed=0)
    before = mon.observe(feats["clean"][: 2 * WINDOW])
    assert not any(r["drift"] for r in before)
    after = mon.observe(feats[shift][: 2 * WINDOW])
    print(
        shift,
        "p-values after the switch:",
        [r["p_value"] for r in after],
        "MMD^2:",
        [round(r["statistic"], 4) for r in after],
        "clean MMD^2:",
        [round(r["statistic"], 4) for r in before],
    )
    assert [r["window"] for r in after] == [2, 3]
    assert any(r["drift"] for r in after), "no drift raised within 2 windows of the switch"
    assert after[0]["drift"] and after[0]["p_value"] == pytest.approx(1 / 501)
    assert min(r["statistic"] for r in after) > 5 * max(r["statistic"] for r in before)
    assert [r["drift"] for r in mon.history] == [False, False] + [r["drift"] for r in after]


def test_mmd_pvalue_is_calibrated_under_the_null(feats):
    # Two disjoint sets of clean training images: 40 windows of 50, each against 500 reference rows drawn afresh
    # from the 1,000, at alpha = 0.05.
    # Under the null the p-values are (discretely) uniform: ~2 rejections expected, P[Bin(40, 0.05) >= 7] < 0.005.
    # 40 small tests of ~30 tensor ops each: on a busy 2-core machine two intra-op threads wait on each other at
    # every op (measured 9 s with 2 threads against 0.3 s with 1), so this test runs single-threaded.
    torch.set_num_threads(1)
    mon = DriftMonitor(feats["reference"], window=50, alpha=0.05, permutations=99, max_reference=500, seed=3)
    p = np.array([r["p_value"] for r in mon.observe(feats["train_rest"])])
    rejections = int((p <= 0.05).sum())
    uniform_p = stats.kstest(p, "uniform").pvalue
    print(f"null: {rejections}/40 rejections at 0.05, mean p {p.mean():.3f}, KS-uniform p {uniform_p:.3f}")
    assert p.size == 40
    assert rejections <= 6
    assert 0.35 < p.mean() < 0.65
    assert uniform_p > 0.001


def test_fast_mmd_matches_a_double_loop():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(13, 5)), rng.normal(0.3, 1.2, size=(9, 5))
    bw = 1.7

    def k(a, b):
        return math.exp(-float(np.sum((a - b) ** 2)) / (2 * bw * bw))

    def slow(xs, ys):
        m, n = len(xs), len(ys)
        sxx = sum(k(xs[i], xs[j]) for i in range(m) for j in range(m) if i != j)
        syy = sum(k(ys[i], ys[j]) for i in range(n) for j in range(n) if i != j)
        sxy = sum(k(xs[i], ys[j]) for i in range(m) for j in range(n))
        return sxx / (m * (m - 1)) + syy / (n * (n - 1)) - 2 * sxy / (m * n)

    tx, ty = torch.tensor(x), torch.tensor(y)
    assert mmd2_unbiased(tx, ty, bw) == pytest.approx(slow(x, y), abs=1e-9)
    kernel = gaussian_kernel(torch.cat([tx, ty]), torch.cat([tx, ty]), bw)
    assert float(kernel[0, 13]) == pytest.approx(k(x[0], y[0]), abs=1e-12)
    pooled = np.concatenate([x, y])
    g = torch.Generator().manual_seed(0)
    splits = torch.stack([torch.arange(13, 22)] + [torch.randperm(22, generator=g)[:9] for _ in range(200)])
    fast = mmd2_split_statistics(kernel, splits).numpy()  # 200 splits: two batches of the vectorised path
    for b in range(0, splits.shape[0], 20):
        mask = np.zeros(22, bool)
        mask[splits[b].numpy()] = True
        assert fast[b] == pytest.approx(slow(pooled[~mask], pooled[mask]), abs=1e-6)
    assert fast[0] == pytest.approx(slow(x, y), abs=1e-9)


def test_mmd_window_costs_one_kernel_matrix_and_is_reproducible(feats, monkeypatch):
    # The cost of a window, counted rather than timed: one (m + n)^2 kernel matrix, and the 500 permutation
    # statistics in one vectorised call (batched matrix products) — not a kernel or a call per permutation.
    kernels, splits = [], []
    real_kernel, real_splits = drift.gaussian_kernel, drift.mmd2_split_statistics

    def counting_kernel(a, b, bandwidth):
        kernels.append((a.shape[0], b.shape[0]))
        return real_kernel(a, b, bandwidth)

    def counting_splits(kernel, y_index):
        splits.append(tuple(torch.as_tensor(y_index).reshape(-1, y_index.shape[-1]).shape))
        return real_splits(kernel, y_index)

    monkeypatch.setattr(drift, "gaussian_kernel", counting_kernel)
    monkeypatch.setattr(drift, "mmd2_split_statistics", counting_splits)
    ref = feats["reference"][:500]
    mon = DriftMonitor(ref, window=200, alpha=ALPHA, permutations=500, seed=7)
    start = time.perf_counter()
    (res,) = mon.observe(feats["clean"][:200])
    print(f"one MMD window (500 + 200 rows, d=128, 500 permutations): {time.perf_counter() - start:.3f} s")
    assert kernels == [(700, 700)], kernels
    assert splits == [(1, 200), (500, 200)], splits  # the observed split, then all permutations at once
    assert res["p_value"] * 501 == pytest.approx(round(res["p_value"] * 501))
    again = DriftMonitor(ref, window=200, alpha=ALPHA, permutations=500, seed=7).observe(feats["clean"][:200])[0]
    assert (again["p_value"], again["statistic"]) == (res["p_value"], res["statistic"])
    mon.reset()
    assert mon.history == [] and mon.pending == 0
    mon.observe(feats["clean"][:150])
    assert mon.pending == 150
    mon.reset()
    assert mon.pending == 0
    redo = mon.observe(feats["clean"][:200])[0]  # reset starts the window index and the random draws over
    assert (redo["window"], redo["p_value"], redo["statistic"]) == (0, res["p_value"], res["statistic"])


# --- tabular: per-feature KS with Benjamini-Hochberg ----------------------------------------------------------


@pytest.fixture(scope="module")
def cancer():
    x = load_breast_cancer().data
    order = np.random.default_rng(0).permutation(x.shape[0])
    x = x[order]
    return x[:369], x[369:469], x[469:569]


def test_ks_clean_window_passes_and_shifted_window_drifts_with_bh(cancer):
    ref, clean, held = cancer
    mon = DriftMonitor(torch.tensor(ref), test="ks", window=100, alpha=ALPHA)
    (r_clean,) = mon.observe(torch.tensor(clean))
    shifted = held.copy()
    shifted[:, [0, 7, 20]] += ref[:, [0, 7, 20]].std(axis=0)
    (r_shift,) = mon.observe(torch.tensor(shifted))
    print("ks clean:", r_clean, "\nks shifted:", r_shift)
    assert not r_clean["drift"] and r_clean["features_drifting"] == 0
    assert r_shift["drift"] and r_shift["features_drifting"] >= 3
    assert r_shift["test"] == "ks" and r_shift["window"] == 1 and r_shift["n"] == 100

    # the same numbers by hand: scipy per feature, statsmodels' Benjamini-Hochberg
    for window, result in ((clean, r_clean), (shifted, r_shift)):
        raw = np.array([stats.ks_2samp(ref[:, j], window[:, j]).pvalue for j in range(ref.shape[1])])
        reject, adjusted, _, _ = multipletests(raw, alpha=ALPHA, method="fdr_bh")
        assert result["p_value"] == pytest.approx(adjusted.min(), rel=1e-9)
        assert result["features_drifting"] == int(reject.sum())
        assert result["statistic"] == pytest.approx(
            max(stats.ks_2samp(ref[:, j], window[:, j]).statistic for j in range(ref.shape[1]))
        )
        if result is r_clean:  # the correction matters: the uncorrected smallest p is smaller
            assert raw.min() < adjusted.min()

    # the shift alone drifts: unshifted, the same held-out rows do not
    assert not mon.observe(torch.tensor(held))[0]["drift"]


def test_adjust_pvalues_matches_statsmodels():
    rng = np.random.default_rng(1)
    for p in (rng.uniform(size=30) ** 3, np.array([0.01, 0.01, 0.02, 0.5, 0.5, 1.0, 0.0001]), np.array([0.3])):
        for ours, theirs in (("bh", "fdr_bh"), ("holm", "holm")):
            assert np.allclose(adjust_pvalues(p, ours), multipletests(p, method=theirs)[1], rtol=0, atol=1e-12)
    p = rng.uniform(size=10) / 10
    assert (adjust_pvalues(p, "holm") >= adjust_pvalues(p, "bh") - 1e-15).all()  # Holm is the stricter
    assert not np.allclose(adjust_pvalues(p, "bh"), adjust_pvalues(p, "holm"))


def test_holm_correction_and_history_cap(cancer, monkeypatch):
    ref, clean, _ = cancer
    monkeypatch.setattr(drift, "HISTORY_CAP", 3)
    mon = DriftMonitor(torch.tensor(ref), test="ks", window=20, alpha=ALPHA, correction="holm")
    out = mon.observe(torch.tensor(clean))  # 5 windows of 20
    assert [r["window"] for r in out] == [0, 1, 2, 3, 4]
    assert [r["window"] for r in mon.history] == [2, 3, 4]
    raw = np.array([stats.ks_2samp(ref[:, j], clean[80:, j]).pvalue for j in range(ref.shape[1])])
    assert out[4]["p_value"] == pytest.approx(multipletests(raw, method="holm")[1].min(), rel=1e-9)


# --- bad input -------------------------------------------------------------------------------------------------


def test_bad_arguments_raise_usage_errors(cancer):
    ref = torch.tensor(cancer[0])
    cases = [
        ({"test": "chi2"}, "unknown drift test"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"window": 5}, "window"),
        ({"permutations": 10}, "permutations"),
        ({"permutations": 50, "alpha": 0.01}, "smallest p-value"),
        ({"window": 400}, "at least window=400 rows"),
        ({"max_reference": 50}, "max_reference"),
        ({"test": "ks", "correction": "bonferroni"}, "correction"),
    ]
    for kwargs, message in cases:
        with pytest.raises(UsageError, match=message):
            DriftMonitor(ref, **kwargs)
    with pytest.raises(UsageError, match="2-D"):
        DriftMonitor(ref[0])
    bad = ref.clone()
    bad[3, 4] = float("nan")
    with pytest.raises(UsageError, match="NaN"):
        DriftMonitor(bad)
    with pytest.raises(UsageError, match="identical"):
        DriftMonitor(torch.ones(300, 4))

    mon = DriftMonitor(ref, test="ks", window=20)
    mon.observe(ref[:5])
    with pytest.raises(UsageError, match="30 features"):
        mon.observe(torch.zeros(4, 29))
    with pytest.raises(UsageError, match="2-D"):
        mon.observe(ref[0])
    rows = ref[:4].clone()
    rows[1, 0] = float("inf")
    with pytest.raises(UsageError, match="NaN or infinite"):
        mon.observe(rows)
    assert mon.pending == 5  # a rejected batch leaves the partial window as it was
    assert mon.observe(torch.zeros(0, 30)) == []
