"""Black-box adapters on real models: HTTP (RemoteClassifier), ONNX, scikit-learn."""

from __future__ import annotations

import json
import math
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from torch import nn

from bastion.errors import UsageError
from bastion.models.onnx import OnnxClassifier
from bastion.models.remote import RemoteClassifier
from bastion.models.sklearn import SklearnClassifier
from bastion.models.training import TrainConfig, train_module

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*(legacy TorchScript-based ONNX|is deprecated|will be removed).*:DeprecationWarning"
)


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x = (d.data / 16.0).astype(np.float64)
    est = LogisticRegression(max_iter=1000).fit(x[:1500], d.target[:1500])
    return est, x, d.target


# ---------------------------------------------------------------- remote


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep the test output clean
        pass

    def _send(self, status: int, body: object, raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        srv = self.server
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        x = np.asarray(payload["inputs"], dtype=np.float64).reshape(len(payload["inputs"]), -1)
        srv.batches.append(len(x))  # type: ignore[attr-defined]
        srv.auth.append(self.headers.get("Authorization"))  # type: ignore[attr-defined]
        est = srv.model  # type: ignore[attr-defined]
        p = est.predict_proba(x)
        route = self.path
        if route == "/proba":
            self._send(200, {"probabilities": p.tolist()})
        elif route == "/logits":
            self._send(200, {"logits": est.decision_function(x).tolist()})
        elif route == "/labels":
            self._send(200, {"labels": [int(k) for k in p.argmax(1)]})
        elif route == "/results":
            self._send(200, {"results": [{"probabilities": r.tolist(), "label": int(r.argmax())} for r in p]})
        elif route == "/error":
            self._send(500, {"detail": "model exploded"})
        elif route == "/notjson":
            self._send(200, None, raw=b"<html>oops</html>")
        elif route == "/short":
            self._send(200, {"probabilities": p[:-1].tolist()})
        else:
            self._send(404, {"detail": f"no route {route}"})


@pytest.fixture(scope="module")
def server(digits):
    est, _, _ = digits
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.model, httpd.batches, httpd.auth = est, [], []  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _url(httpd, route: str) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}{route}"


def test_remote_probabilities_match_and_batching(server, digits):
    est, x, _ = digits
    xs = torch.tensor(x[1500:1700], dtype=torch.float32)  # 200 inputs
    with RemoteClassifier(_url(server, "/proba"), input_shape=(64,), n_classes=10, batch_size=64) as clf:
        server.batches.clear()
        scores = clf.logits(xs)
        assert server.batches == [64, 64, 64, 8]
        assert clf.n_requests == math.ceil(200 / 64) and clf.n_queries == 200
        assert clf.output == "probabilities" and not clf.white_box and not clf.label_only
        assert torch.allclose(scores, torch.tensor(est.predict_proba(x[1500:1700]), dtype=torch.float32), atol=1e-5)
        assert torch.equal(clf.predict(xs), torch.tensor(est.predict(x[1500:1700])))
        assert clf.n_queries == 400


def test_remote_logits_results_and_auth(server, digits):
    est, x, _ = digits
    xs = torch.tensor(x[1500:1530], dtype=torch.float32)
    logits = RemoteClassifier(_url(server, "/logits"), input_shape=(64,), n_classes=10)
    assert torch.allclose(
        logits.logits(xs), torch.tensor(est.decision_function(x[1500:1530]), dtype=torch.float32), atol=1e-4
    )
    assert logits.output == "logits"
    server.auth.clear()
    results = RemoteClassifier(
        _url(server, "/results"), input_shape=(1, 8, 8), n_classes=10, api_key="s3cret", batch_size=7
    )
    probs = results.logits(xs.reshape(-1, 1, 8, 8))
    assert torch.allclose(probs, torch.tensor(est.predict_proba(x[1500:1530]), dtype=torch.float32), atol=1e-5)
    assert results.n_requests == 5 and set(server.auth) == {"Bearer s3cret"}
    assert "s3cret" not in repr(results)


def test_remote_label_only(server, digits):
    est, x, _ = digits
    xs = torch.tensor(x[1500:1600], dtype=torch.float32)
    clf = RemoteClassifier(_url(server, "/labels"), input_shape=(64,), n_classes=10)
    scores = clf.logits(xs)
    assert clf.label_only
    assert torch.equal(scores.sum(1), torch.ones(100)) and set(scores.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(scores.argmax(1), torch.tensor(est.predict(x[1500:1600])))


def test_remote_errors(server, digits):
    _, x, _ = digits
    xs = torch.tensor(x[:3], dtype=torch.float32)
    with pytest.raises(UsageError, match="HTTP 500: model exploded"):
        RemoteClassifier(_url(server, "/error"), input_shape=(64,), n_classes=10).logits(xs)
    with pytest.raises(UsageError, match="HTTP 404: no route /nowhere"):
        RemoteClassifier(_url(server, "/nowhere"), input_shape=(64,), n_classes=10).logits(xs)
    with pytest.raises(UsageError, match="did not answer with JSON"):
        RemoteClassifier(_url(server, "/notjson"), input_shape=(64,), n_classes=10).logits(xs)
    with pytest.raises(UsageError, match="sent 3 inputs but 'probabilities' holds 2"):
        RemoteClassifier(_url(server, "/short"), input_shape=(64,), n_classes=10).logits(xs)
    with pytest.raises(UsageError, match=r"shape \(3, 10\), expected \(3, 12\)"):
        RemoteClassifier(_url(server, "/proba"), input_shape=(64,), n_classes=12).logits(xs)
    with pytest.raises(UsageError, match="expects"):
        RemoteClassifier(_url(server, "/proba"), input_shape=(64,), n_classes=10).logits(xs.reshape(3, 1, 8, 8))
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UsageError, match="cannot reach the model server") as info:
        RemoteClassifier(f"http://127.0.0.1:{port}/p", input_shape=(64,), n_classes=10).logits(xs)
    assert info.value.__cause__ is None and info.value.__suppress_context__


# ---------------------------------------------------------------- onnx


@pytest.fixture(scope="module")
def prob_mlp(digits):
    _, x, y = digits
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    xt, yt = torch.tensor(x[:1500], dtype=torch.float32), torch.tensor(y[:1500])
    train_module(net, xt, yt, TrainConfig(epochs=5, batch_size=64, lr=3e-3))
    return nn.Sequential(net, nn.Softmax(dim=1)).eval()


def test_onnx_probabilities_output(prob_mlp, digits, tmp_path):
    _, x, y = digits
    path = tmp_path / "probs.onnx"
    torch.onnx.export(
        prob_mlp,
        (torch.zeros(2, 64),),
        str(path),
        dynamo=False,
        input_names=["x"],
        output_names=["probs"],
        dynamic_axes={"x": {0: "n"}, "probs": {0: "n"}},
    )
    clf = OnnxClassifier(path.read_bytes())
    assert clf.input_shape == (64,) and clf.n_classes == 10 and not clf.white_box
    xs = torch.tensor(x[1500:], dtype=torch.float32)
    with torch.no_grad():
        ref = prob_mlp(xs)
    assert torch.allclose(clf.proba(xs), ref, atol=1e-5)
    assert clf.output == "probabilities"
    pred = clf.predict(xs)
    assert torch.equal(pred, ref.argmax(1))
    assert float((pred == torch.tensor(y[1500:])).float().mean()) > 0.85  # it is a real model
    assert clf.n_queries == 2 * xs.shape[0]
    with pytest.raises(UsageError, match="expects"):
        clf.logits(torch.zeros(3, 8, 8))


def test_onnx_fixed_batch_is_chunked(prob_mlp, digits, tmp_path):
    _, x, _ = digits
    path = tmp_path / "fixed.onnx"
    torch.onnx.export(prob_mlp, (torch.zeros(4, 64),), str(path), dynamo=False)
    clf = OnnxClassifier(path, output="probabilities")
    xs = torch.tensor(x[:11], dtype=torch.float32)  # 2 full chunks of 4 and one padded chunk
    with torch.no_grad():
        assert torch.allclose(clf.logits(xs), prob_mlp(xs), atol=1e-5)


def test_onnx_rejects_multi_input_and_bad_shape(prob_mlp, tmp_path):
    class TwoInputs(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a + b

    path = tmp_path / "two.onnx"
    torch.onnx.export(TwoInputs(), (torch.zeros(1, 10), torch.zeros(1, 10)), str(path), dynamo=False)
    with pytest.raises(UsageError, match="has 2 inputs"):
        OnnxClassifier(path)
    good = tmp_path / "mlp.onnx"
    torch.onnx.export(prob_mlp, (torch.zeros(1, 64),), str(good), dynamo=False)
    with pytest.raises(UsageError, match="does not match the ONNX input"):
        OnnxClassifier(good, input_shape=(1, 8, 8))
    bad = tmp_path / "junk.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(UsageError, match="cannot load"):
        OnnxClassifier(bad)


# ---------------------------------------------------------------- scikit-learn


def test_sklearn_logistic_gradients_match_finite_differences(digits):
    est, x, _ = digits
    clf = SklearnClassifier(est, input_shape=(1, 8, 8))
    assert clf.white_box and clf.output == "logits"
    x0 = x[1500:1504]
    xs = torch.tensor(x0, dtype=torch.float32).reshape(-1, 1, 8, 8).requires_grad_(True)
    assert torch.allclose(
        clf.logits(xs).detach(), torch.tensor(est.decision_function(x0), dtype=torch.float32), atol=1e-4
    )
    w = torch.randn(4, 10, generator=torch.Generator().manual_seed(1))
    grad = torch.autograd.grad((clf.logits(xs) * w).sum(), xs)[0].reshape(4, 64).double().numpy()
    h = 1e-4
    fd = np.zeros_like(x0)
    for i in range(64):  # central differences of the real sklearn decision function
        e = np.zeros(64)
        e[i] = h
        diff = est.decision_function(x0 + e) - est.decision_function(x0 - e)
        fd[:, i] = (diff * w.double().numpy()).sum(1) / (2 * h)
    assert np.allclose(grad, fd, atol=1e-3 * np.abs(fd).max())


def test_sklearn_gradient_boosting_is_black_box():
    d = load_digits()
    x, y = d.data[:600] / 16.0, d.target[:600]
    est = GradientBoostingClassifier(n_estimators=20, max_depth=2, random_state=0).fit(x[:500], y[:500])
    clf = SklearnClassifier(est, input_shape=(64,))
    assert not clf.white_box and clf.output == "probabilities"
    xs = torch.tensor(x[500:], dtype=torch.float32)
    assert torch.allclose(clf.logits(xs), torch.tensor(est.predict_proba(x[500:]), dtype=torch.float32), atol=1e-6)
    assert torch.equal(clf.predict(xs), torch.tensor(est.predict(x[500:])))
    with pytest.raises(UsageError, match="not linear"):
        SklearnClassifier(est, input_shape=(64,), white_box=True)
