"""SimBA (score-based, L2): gradient-free, batched, exact query counts, pixel and DCT bases."""

from __future__ import annotations

import pytest
import torch

from bastion.attacks.evasion.simba import SimBA, dct_matrix
from bastion.data import load_dataset
from bastion.errors import UsageError
from bastion.models.remote import RemoteClassifier
from bastion.models.zoo import load_zoo
from blackbox_helpers import BlackBoxTorch, digits_endpoint
from blackbox_helpers import GradientFree as _Opaque


def _check_counts(r, max_queries: int) -> None:
    q = r.extra["queries"]
    assert int(q.sum()) == r.queries
    assert int(q.min()) >= 1 and int(q.max()) <= max_queries
    assert torch.equal(r.extra["query_success"] | ~r.clean_correct, r.success | ~r.clean_correct)


def test_dct_matrix_is_orthonormal():
    d = dct_matrix(8, dtype=torch.float64)
    assert torch.allclose(d @ d.T, torch.eye(8, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("basis", ["dct", "pixel"])
def test_simba_fools_mnist_cnn_without_gradients(mnist_cnn, mnist, basis):
    x, y = mnist.x_test[:30], mnist.y_test[:30]
    model = BlackBoxTorch(_Opaque(mnist_cnn.module), n_classes=10, input_shape=(1, 28, 28), output="logits")
    with pytest.raises(RuntimeError, match="asked for a gradient"):
        model.logits(x[:2].clone().requires_grad_(True)).sum().backward()
    r = SimBA(basis=basis, max_queries=1000)(model, x, y)
    assert r.clean_accuracy >= 0.9
    assert r.success_rate >= (0.75 if basis == "dct" else 0.6)  # dct ~0.9, pixel ~0.75 measured
    assert r.gradients == 0
    _check_counts(r, 1000)
    # unbounded run: every accepted step is +-epsilon along one unit direction, one per query at most
    steps = r.extra["queries"] - 1
    assert bool((r.norms <= 0.2 * steps.float() + 1e-4).all())
    assert r.median_perturbation < 4.0  # ~2.5 measured on MNIST


def test_simba_eps_bound_and_targeted(mnist_cnn, mnist):
    x, y = mnist.x_test[:20], mnist.y_test[:20]
    r = SimBA(eps=1.5, basis="dct", max_queries=400)(mnist_cnn, x, y)
    assert float(r.norms.max()) <= 1.5 + 1e-5
    _check_counts(r, 400)
    t = (y + 1) % 10
    rt = SimBA(basis="dct", max_queries=600)(mnist_cnn, x, y, t)
    assert float(rt.success.float().mean()) >= 0.3
    assert torch.equal(rt.pred_adv[rt.success], t[rt.success])
    _check_counts(rt, 600)


def test_simba_on_sklearn_trees():
    data = load_dataset("breast-cancer")
    model = load_zoo("cancer-gbt")
    x, y = data.x_test[:40], data.y_test[:40]
    r = SimBA(max_queries=200)(model, x, y)
    assert r.clean_accuracy >= 0.85 and r.success_rate >= 0.6
    _check_counts(r, 200)


def test_simba_against_http_endpoint():
    with digits_endpoint() as (httpd, digits):
        x, y = digits.x_test[:40], digits.y_test[:40]
        url = f"http://127.0.0.1:{httpd.server_address[1]}/"
        with RemoteClassifier(url, input_shape=(1, 8, 8), n_classes=10, batch_size=256) as model:
            r = SimBA(epsilon=0.5, max_queries=300)(model, x, y)
            assert r.success_rate >= 0.8
            _check_counts(r, 300)
            # at most two requests per iteration (+epsilon, then -epsilon), never one per image
            assert httpd.requests <= 2 * int(r.extra["queries"].max()) + 2
            assert r.queries >= 10 * httpd.requests


def test_simba_invalid_args():
    with pytest.raises(UsageError, match="eps"):
        SimBA(eps=-1.0)
    with pytest.raises(UsageError, match="max_queries"):
        SimBA(max_queries=0)
    with pytest.raises(UsageError, match="unknown norm"):
        SimBA(norm="l7")
    with pytest.raises(UsageError, match="supports the norms"):
        SimBA(norm="linf")
    with pytest.raises(UsageError, match="epsilon"):
        SimBA(epsilon=0)
    with pytest.raises(UsageError, match="basis"):
        SimBA(basis="wavelet")
    assert SimBA.minimum_norm and not SimBA.needs_gradients and SimBA().eps is None
