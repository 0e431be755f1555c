"""Training-set sanitisers: on a real BadNets-poisoned mnist-cnn (5% of mnist5k, target 0), on the clean zoo model,
against scikit-learn references, and with a sanitiser that does nothing useful failing the same checks."""

from __future__ import annotations

import doctest
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import KMeans
from sklearn.decomposition import FastICA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import silhouette_score

import bastion.defenses.sanitization as sanitization
from bastion.data import Dataset, load_dataset
from bastion.defenses.sanitization import (
    SANITIZERS,
    ActivationClustering,
    SanitizationResult,
    Sanitizer,
    SpectralSignatures,
    get_sanitizer,
)
from bastion.defenses.sanitization import spectral as spectral_module
from bastion.defenses.sanitization.clustering import reduce_components, silhouette, two_means
from bastion.defenses.sanitization.spectral import remove_top_share, spectral_signature_scores
from bastion.errors import UsageError
from bastion.metrics import detection_scores, roc_auc
from bastion.models.sklearn import SklearnClassifier


def check_sanitized(removed: torch.Tensor, poisoned: torch.Tensor) -> dict[str, float]:
    """Issue 13's target, both sides: at least 90% of the poison removed, at most 5% of the clean records."""
    d = detection_scores(removed, poisoned)
    assert d["recall"] >= 0.9, d
    assert d["removed_clean_rate"] <= 0.05, d
    return d


@pytest.fixture(scope="module")
def clustered(badnets_mnist) -> SanitizationResult:
    poisoned, model = badnets_mnist
    return get_sanitizer("clustering").sanitize(model, poisoned.data)


@pytest.fixture(scope="module")
def poisoned_features(badnets_mnist) -> torch.Tensor:
    """The poisoned model's penultimate activations of the 4,000 training records (4000, 128)."""
    poisoned, model = badnets_mnist
    return model.features(poisoned.data.x_train)[0]


def test_registry_and_surface_are_pinned():
    assert SANITIZERS.names() == ["clustering", "spectral"]
    assert SANITIZERS["clustering"] is ActivationClustering and SANITIZERS["spectral"] is SpectralSignatures
    assert sorted(sanitization.__all__) == sorted(
        [
            "SANITIZERS",
            "ActivationClustering",
            "NeuralCleanse",
            "SanitizationResult",
            "Sanitizer",
            "ScanResult",
            "SpectralSignatures",
            "anomaly_index",
            "flag_small_outliers",
            "get_sanitizer",
            "register_sanitizer",
        ]
    )
    assert doctest.testmod(spectral_module).failed == 0


# -- activation clustering on the poisoned model ---------------------------------------------------------------
def test_activation_clustering_removes_the_badnets_poison(badnets_mnist, clustered):
    poisoned, _ = badnets_mnist
    d = check_sanitized(clustered.removed_mask, poisoned.is_poisoned)
    assert d["precision"] >= 0.5  # measured 0.53 (the clean sub-clusters of classes 7 and 9 go too)
    assert 0 in clustered.details["flagged_classes"]  # the target class
    assert clustered.details["cluster_sizes"][0] == pytest.approx(200 / 600, abs=0.01)  # exactly the poison
    # the continuous score ranks poison above clean records (a ROC curve can be drawn from it)
    assert roc_auc(poisoned.is_poisoned, clustered.scores) >= 0.95
    assert torch.equal(clustered.removed_mask, clustered.scores > 0)


def test_useless_sanitisers_fail_the_same_check(badnets_mnist):
    poisoned, _ = badnets_mnist
    truth = poisoned.is_poisoned
    n = truth.numel()
    g = torch.Generator().manual_seed(0)
    nothing = torch.zeros(n, dtype=torch.bool)
    random_share = torch.rand(n, generator=g) < 0.1
    whole_target_class = poisoned.data.y_train == 0  # knows the target, removes the class: 10% of the clean go too
    for removed in (nothing, random_share, whole_target_class):
        with pytest.raises(AssertionError):
            check_sanitized(removed, truth)


def test_sanitize_keeps_the_rest_of_the_data_untouched(badnets_mnist, clustered):
    poisoned, _ = badnets_mnist
    data = poisoned.data
    kept = clustered.kept
    assert clustered.n_removed + kept.numel() == data.x_train.shape[0] == clustered.n_train
    assert torch.equal(clustered.data.x_train, data.x_train[kept])
    assert torch.equal(clustered.data.y_train, data.y_train[kept])
    assert clustered.data.x_test is data.x_test and clustered.data.y_test is data.y_test
    assert clustered.data.n_classes == data.n_classes and clustered.data.bounds == data.bounds
    assert clustered.data.meta["sanitized_by"] == "clustering"
    assert bool(torch.all(clustered.removed[1:] > clustered.removed[:-1]))
    record = json.loads(json.dumps(clustered.to_dict()))
    assert record["schema"] == "bastion.sanitize/1" and record["method"] == "clustering"
    assert record["n_removed"] == len(record["removed"]) == clustered.n_removed
    assert len(record["scores"]) == clustered.n_train
    assert record["params"]["size_threshold"] == 0.35 and "generator" not in record["params"]
    assert sum(record["details"]["removed_per_class"]) == clustered.n_removed


def test_activation_clustering_is_deterministic_given_a_seed(badnets_mnist, poisoned_features):
    poisoned, _ = badnets_mnist
    f, y = poisoned_features, poisoned.data.y_train
    a = ActivationClustering(n_init=1, seed=0).fit_features(f, y)
    b = ActivationClustering(n_init=1, generator=torch.Generator().manual_seed(0)).fit_features(f, y)
    c = ActivationClustering(n_init=1, seed=1).fit_features(f, y)
    assert torch.equal(a.scores_, b.scores_)
    assert not torch.equal(a.scores_, c.scores_)  # the seed is used


def test_fit_features_is_fit_without_the_forward_pass(badnets_mnist, clustered, poisoned_features):
    poisoned, _ = badnets_mnist
    y, feats = poisoned.data.y_train, poisoned_features
    san = ActivationClustering().fit_features(feats, y, n_classes=10)
    assert torch.equal(san.scores_, clustered.scores) and san.layer_ is None
    bad = [
        (feats[:, 0], y, {}, "shape \\(N, d\\)"),
        (feats, y.float(), {}, "integer class indices, got dtype torch.float32"),
        (feats, y[:-1], {}, "shape \\(4000,\\)"),
        (feats, y, {"n_classes": 5}, "labels must lie in \\[0, 4\\]"),
        (feats * float("nan"), y, {}, "NaN"),
        (feats[:1], y[:1], {}, "at least 2"),
    ]
    for f, labels, kwargs, match in bad:
        with pytest.raises(UsageError, match=match):
            SpectralSignatures().fit_features(f, labels, **kwargs)


# -- spectral signatures -----------------------------------------------------------------------------------------
def test_spectral_signatures_on_badnets_mnist_find_the_poison_only_partly(badnets_mnist, poisoned_features):
    """Out of reach for this method here (measured in benchmarks/sanitization_peers.py): in the target class the
    poison is not the top singular direction — the poisoned records, nine source digits, spread more than the
    clean ones. What holds: the score ranks poison above clean in that class better than chance, and the rule
    removes exactly its share of every class."""
    poisoned, _ = badnets_mnist
    y, truth = poisoned.data.y_train, poisoned.is_poisoned
    san = SpectralSignatures(expected_rate=0.05).fit_features(poisoned_features, y, n_classes=10)
    target = y == 0
    assert roc_auc(truth[target], san.scores_[target]) >= 0.7  # measured 0.745; chance is 0.5
    counts = torch.bincount(y, minlength=10)
    assert san.removed_per_class_ == [math.ceil(0.075 * int(n) - 1e-9) for n in counts]
    with pytest.raises(AssertionError):  # recall 0.185 at 7% of the clean removed
        check_sanitized(san.remove_, truth)


def test_spectral_signatures_remove_a_separated_poison_completely():
    """The paper's regime (its Lemma 3.1): poison far from the clean mean relative to both spreads."""
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(380, 32, generator=g, dtype=torch.float64)
    direction = torch.nn.functional.normalize(torch.randn(32, generator=g, dtype=torch.float64), dim=0)
    for shift, want in ((8.0, 1.0), (0.0, 0.3)):
        poison = torch.randn(20, 32, generator=g, dtype=torch.float64) + shift * direction
        scores = spectral_signature_scores(torch.cat([clean, poison]))
        removed = remove_top_share(scores, [torch.arange(400)], 1.5 * 0.05)
        recall = float(removed[380:].float().mean())
        assert (recall == 1.0) if want == 1.0 else (recall <= want), (shift, recall)
        assert int(removed.sum()) == 30


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 40), st.integers(1, 12), st.integers(0, 2**31 - 1))
def test_spectral_scores_are_the_papers_formula(n, d, seed):
    rng = np.random.default_rng(seed)
    r = rng.normal(size=(n, d)) * rng.uniform(0.1, 3, size=d)
    got = spectral_signature_scores(torch.from_numpy(r)).numpy()
    centred = r - r.mean(axis=0)
    v = np.linalg.svd(centred, full_matrices=False)[2][0]
    np.testing.assert_allclose(got, (centred @ v) ** 2, rtol=1e-7, atol=1e-9)
    shifted = spectral_signature_scores(torch.from_numpy(r + rng.normal(size=d) * 100)).numpy()
    np.testing.assert_allclose(shifted, got, rtol=1e-5, atol=1e-6)  # a translation changes nothing


def test_on_clean_data_spectral_removes_its_fixed_share_and_clustering_little(mnist_cnn, mnist):
    spec = get_sanitizer("spectral").sanitize(mnist_cnn, mnist)
    counts = torch.bincount(mnist.y_train, minlength=10)
    assert spec.n_removed == sum(math.ceil(0.075 * int(n) - 1e-9) for n in counts)  # by design, ~7.5%
    feats = mnist_cnn.features(mnist.x_train)[0]
    clus = get_sanitizer("clustering").fit_features(feats, mnist.y_train, n_classes=10)
    assert float(clus.remove_.float().mean()) <= 0.05  # measured 4.8%: class 7's 13% sub-cluster and class 9's 35%


# -- the clustering pieces against scikit-learn ------------------------------------------------------------------
def test_whitened_components_cluster_like_sklearn_fastica(badnets_mnist, poisoned_features):
    poisoned, _ = badnets_mnist
    feats = poisoned_features[poisoned.data.y_train == 0].double()  # the target class: 400 clean, 200 poisoned
    z = reduce_components(feats, 10, whiten=True).numpy()
    ica = FastICA(10, whiten="unit-variance", max_iter=1000, tol=0.005, random_state=0).fit_transform(feats.numpy())
    for seed in range(3):
        a = KMeans(2, n_init=10, random_state=seed).fit_predict(z)
        b = KMeans(2, n_init=10, random_state=seed).fit_predict(ica)
        assert (a == b).all() or (a != b).all()
        assert silhouette_score(z, a) == pytest.approx(silhouette_score(ica, b), abs=1e-9)
    ours, _ = two_means(torch.from_numpy(z), n_init=100, generator=torch.Generator().manual_seed(0))
    best = KMeans(2, n_init=100, random_state=0).fit(z)
    inertia = sum(((z[ours.numpy() == k] - z[ours.numpy() == k].mean(0)) ** 2).sum() for k in (0, 1))
    assert inertia == pytest.approx(best.inertia_, rel=1e-9)


@settings(max_examples=60, deadline=None)
@given(st.integers(3, 40), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_two_means_is_a_lloyd_fixed_point_and_silhouette_matches_sklearn(n, k, seed):
    rng = np.random.default_rng(seed)
    z = torch.from_numpy(rng.normal(size=(n, k)) + (rng.random((n, 1)) < 0.3) * 4)
    labels, centres = two_means(z, n_init=5, generator=torch.Generator().manual_seed(seed))
    if labels.unique().numel() == 2:
        for c in (0, 1):
            torch.testing.assert_close(centres[c], z[labels == c].mean(0))
        dist = torch.cdist(z, centres)
        tie = (dist[:, 0] - dist[:, 1]).abs() < 1e-9
        assert bool(((dist.argmin(1) == labels) | tie).all())
        assert silhouette(z, labels) == pytest.approx(silhouette_score(z.numpy(), labels.numpy()), abs=1e-9)
    random_labels = torch.from_numpy(rng.permutation(np.r_[0, 1, rng.integers(0, 2, n - 2)]))
    want = silhouette_score(z.numpy(), random_labels.numpy())
    assert silhouette(z, random_labels) == pytest.approx(want, abs=1e-9)


# -- bad input ---------------------------------------------------------------------------------------------------
def test_a_model_without_features_is_refused():
    data = load_dataset("breast-cancer")
    est = LogisticRegression(max_iter=200).fit(data.x_train.numpy(), data.y_train.numpy())
    model = SklearnClassifier(est)
    with pytest.raises(UsageError, match="declares no features capability"):
        get_sanitizer("spectral").fit(model, data.x_train, data.y_train)


def test_records_that_do_not_fit_the_model_are_refused(mnist_cnn, mnist):
    x, y = mnist.x_train[:50], mnist.y_train[:50]
    with pytest.raises(UsageError, match=r"shape \(50, 1, 8, 8\) but the model expects \(N, 1, 28, 28\)"):
        get_sanitizer("clustering").fit(mnist_cnn, torch.zeros(50, 1, 8, 8), y)
    with pytest.raises(UsageError, match=r"labels must lie in \[0, 9\], got \[0, 10\]"):
        get_sanitizer("clustering").fit(mnist_cnn, x, torch.cat([y[:-1], torch.tensor([10])]))
    with pytest.raises(UsageError, match="labels have shape"):
        get_sanitizer("spectral").fit(mnist_cnn, x, y[:10])
    with pytest.raises(UsageError, match="at least 2 training records"):
        get_sanitizer("spectral").fit(mnist_cnn, x[:1], y[:1])
    with pytest.raises(UsageError, match="no submodule named 'fc'"):
        get_sanitizer("spectral", layer="fc").fit(mnist_cnn, x, y)
    with pytest.raises(UsageError, match="needs a bastion Dataset"):
        get_sanitizer("spectral").sanitize(mnist_cnn, (x, y))  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="labels must lie"):
        get_sanitizer("spectral").sanitize(mnist_cnn, Dataset("bad", x, y + 3, x, y + 3))


def test_unknown_method_and_bad_settings_are_refused():
    with pytest.raises(UsageError, match="unknown sanitizer 'spectal' \\(did you mean 'spectral'\\?\\)"):
        get_sanitizer("spectal")
    bad = [
        ("spectral", {"expected_rate": 0}, "expected_rate"),
        ("spectral", {"expected_rate": 1.0}, "expected_rate"),
        ("spectral", {"eps_multiplier": -1}, "eps_multiplier"),
        ("spectral", {"expected_rate": 0.7}, "product is below 1"),
        ("spectral", {"layer": ""}, "layer"),
        ("spectral", {"pool": "max"}, "pool"),
        ("spectral", {"batch_size": 0}, "batch_size"),
        ("clustering", {"n_components": 0}, "n_components"),
        ("clustering", {"n_init": 1.5}, "n_init"),
        ("clustering", {"reduce": "tsne"}, "reduce"),
        ("clustering", {"size_threshold": 0.6}, "size_threshold"),
        ("clustering", {"silhouette_threshold": 1.0}, "silhouette_threshold"),
        ("clustering", {"seed": "0"}, "seed"),
        ("clustering", {"generator": 0}, "generator"),
    ]
    for name, kwargs, match in bad:
        with pytest.raises(UsageError, match=match):
            get_sanitizer(name, **kwargs)
    assert repr(SpectralSignatures()) == (
        "SpectralSignatures(layer=None, pool='flatten', batch_size=500, expected_rate=0.05, eps_multiplier=1.5)"
    )
    assert issubclass(ActivationClustering, Sanitizer)


# -- exclusionary reclassification and retraining on what is kept (slow: mnist-cnn trainings, cached) -----------
@pytest.fixture(scope="module")
def reclassified(badnets_mnist, mnist) -> SanitizationResult:
    from poison_helpers import train_cached

    poisoned, model = badnets_mnist

    def train(x, y):
        return train_cached(Dataset("kept", x, y, mnist.x_test, mnist.y_test, mnist.bounds, 10), "mnist-cnn")

    return ActivationClustering(reclassify=train).sanitize(model, poisoned.data)


@pytest.mark.slow
def test_exclusionary_reclassification_keeps_natural_clusters_and_removes_the_poison(
    badnets_mnist, clustered, reclassified
):
    poisoned, _ = badnets_mnist
    truth = poisoned.is_poisoned

    def scores(result):
        removed = torch.zeros(truth.shape[0], dtype=torch.bool)
        removed[result.removed] = True
        return detection_scores(removed, truth)

    before, after = scores(clustered), scores(reclassified)
    assert len(clustered.details["flagged_classes"]) > 1 and before["removed_clean_rate"] > 0.01  # natural splits too
    assert reclassified.details["flagged_classes"] == [0]
    verdict = reclassified.details["reclassified"]["0"]
    assert not verdict["legitimate"] and verdict["source"] != 0 and verdict["ratio"] < 0.2
    assert all(v["legitimate"] for c, v in reclassified.details["reclassified"].items() if c != "0")
    assert after["recall"] >= 0.9 and after["removed_clean_rate"] <= 0.005 and after["f1"] > before["f1"]


@pytest.mark.slow
def test_retraining_on_the_kept_data_removes_the_backdoor(badnets_mnist, reclassified, mnist_cnn):
    from bastion.attacks.poisoning import evaluate_poisoning
    from poison_helpers import train_cached

    poisoned, backdoored = badnets_mnist
    before = evaluate_poisoning(backdoored.predict, poisoned)
    assert before["attack_success_rate"] >= 0.9  # the backdoor is there to remove
    retrained = train_cached(reclassified.data, "mnist-cnn")
    after = evaluate_poisoning(retrained.predict, poisoned, clean_predict=mnist_cnn.predict)
    assert after["attack_success_rate"] <= 0.10
    assert abs(after["clean_accuracy"] - after["clean_model_accuracy"]) <= 0.01
