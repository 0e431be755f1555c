"""Square attack (score-based): gradient-free, batched, exact query counts, numbers on both sides."""

from __future__ import annotations

import pytest
import torch

from bastion.attacks.base import get_attack
from bastion.attacks.evasion.square import Square, p_selection
from bastion.data import load_dataset
from bastion.errors import UsageError
from bastion.models.remote import RemoteClassifier
from bastion.models.zoo import load_zoo
from blackbox_helpers import BlackBoxTorch, digits_endpoint
from blackbox_helpers import GradientFree as _Opaque


def _check_counts(r, max_queries: int) -> None:
    q = r.extra["queries"]
    assert q.dtype == torch.long and q.shape == r.y.shape
    assert int(q.sum()) == r.queries  # every model call is accounted to one image
    assert int(q.min()) >= 1 and int(q.max()) <= max_queries
    assert torch.equal(r.extra["query_success"] | ~r.clean_correct, r.success | ~r.clean_correct)


def test_square_linf_beats_mnist_cnn_without_gradients(mnist_cnn, mnist):
    x, y = mnist.x_test[:100], mnist.y_test[:100]
    model = BlackBoxTorch(_Opaque(mnist_cnn.module), n_classes=10, input_shape=(1, 28, 28), output="logits")
    xr = x.clone().requires_grad_(True)  # the backward really raises
    with pytest.raises(RuntimeError, match="asked for a gradient"):
        model.logits(xr).sum().backward()
    r = Square(eps=0.3, max_queries=1000)(model, x, y)
    assert r.clean_accuracy >= 0.9
    assert r.robust_accuracy <= 0.05  # 0.00 measured
    assert float(r.norms.max()) <= 0.3 + 1e-6 and r.gradients == 0
    _check_counts(r, 1000)
    ok = r.success & r.clean_correct
    assert float(r.extra["queries"][ok].float().mean()) < 100  # ~23 measured: query-efficient
    # the same run on the white-box adapter is identical (it only ever used scores)
    r2 = Square(eps=0.3, max_queries=1000)(mnist_cnn, x, y)
    assert torch.equal(r2.x_adv, r.x_adv) and r2.queries == r.queries


def test_square_l2_and_targeted(mnist_cnn, mnist):
    x, y = mnist.x_test[:40], mnist.y_test[:40]
    r = Square(eps=3.0, norm="l2", max_queries=300)(mnist_cnn, x, y)
    assert float(r.norms.max()) <= 3.0 + 1e-5
    assert r.robust_accuracy <= 0.4  # ~0.1 measured; clean ~0.95
    _check_counts(r, 300)
    t = (y + 1) % 10
    rt = get_attack("square", eps=0.3, max_queries=300)(mnist_cnn, x, y, t)
    assert float(rt.success.float().mean()) >= 0.4  # ~0.6 measured
    assert torch.equal(rt.pred_adv[rt.success], t[rt.success])
    _check_counts(rt, 300)


def test_square_on_sklearn_trees(cancer=None):
    data = load_dataset("breast-cancer")
    model = load_zoo("cancer-gbt")
    assert not model.white_box and model.output == "probabilities"
    x, y = data.x_test[:60], data.y_test[:60]
    r = Square(eps=0.2, max_queries=200)(model, x, y)  # D=30 features: 1-D squares (segments)
    assert r.clean_accuracy >= 0.85
    assert r.robust_accuracy <= r.clean_accuracy - 0.3
    assert float(r.norms.max()) <= 0.2 + 1e-6
    _check_counts(r, 200)


@pytest.fixture(scope="module")
def server():
    with digits_endpoint() as served:
        yield served


def test_square_against_http_endpoint(server):
    httpd, digits = server
    x, y = digits.x_test[:50], digits.y_test[:50]
    url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    with RemoteClassifier(url, input_shape=(1, 8, 8), n_classes=10, batch_size=256) as model:
        httpd.requests = 0
        r = Square(eps=0.3, max_queries=200)(model, x, y)
        assert r.robust_accuracy <= 0.2 and r.clean_accuracy >= 0.9
        _check_counts(r, 200)
        # one request per iteration (plus the base class's clean/adversarial predictions), not per image
        assert httpd.requests <= int(r.extra["queries"].max()) + 2
        assert r.queries >= 5 * httpd.requests


def test_p_schedule_matches_reference():
    assert p_selection(0.8, 0, 10000) == 0.8 and p_selection(0.8, 10, 10000) == 0.8
    assert p_selection(0.8, 11, 10000) == 0.4 and p_selection(0.8, 300, 10000) == 0.1
    assert p_selection(0.8, 9999, 10000) == 0.8 / 512
    assert p_selection(0.8, 5, 1000) == 0.4  # rescaled: iteration 5 of 1000 is 50 of 10000


def test_square_invalid_args():
    with pytest.raises(UsageError, match="eps"):
        Square(eps=-0.1)
    with pytest.raises(UsageError, match="max_queries"):
        Square(max_queries=0)
    with pytest.raises(UsageError, match="unknown norm"):
        Square(norm="l3")
    with pytest.raises(UsageError, match="supports the norms"):
        Square(norm="l1")
    with pytest.raises(UsageError, match="p_init"):
        Square(p_init=1.5)
    assert not Square.needs_gradients
