"""Shared by the query-based attack tests: a real model whose backward pass raises, so an attack
that asked for a gradient would fail loudly, and a real HTTP endpoint serving a scikit-learn model."""

from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import torch
from torch import nn

from bastion.models.torch import TorchClassifier


class NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        return x.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        raise RuntimeError("a query-based attack asked for a gradient")


class GradientFree(nn.Module):
    """The network behind a pass-through whose backward raises."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(NoBackward.apply(x))


class BlackBoxTorch(TorchClassifier):
    white_box = False


class ProbaHandler(BaseHTTPRequestHandler):
    """POST {"inputs": [...]} -> {"probabilities": [...]} from ``server.model`` ({"labels": [...]} when
    ``server.labels_only``); counts requests."""

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        x = np.asarray(payload["inputs"], dtype=np.float64).reshape(len(payload["inputs"]), -1)
        self.server.requests += 1  # type: ignore[attr-defined]
        p = self.server.model.predict_proba(x)  # type: ignore[attr-defined]
        body = {"labels": p.argmax(1).tolist()} if self.server.labels_only else {"probabilities": p.tolist()}  # type: ignore[attr-defined]
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@contextlib.contextmanager
def digits_endpoint(labels_only: bool = False):
    """A real HTTP server on loopback serving a LogisticRegression trained on sklearn digits (its probabilities, or
    only its labels)."""
    from sklearn.linear_model import LogisticRegression

    from bastion.data import load_dataset

    digits = load_dataset("digits")
    est = LogisticRegression(max_iter=500).fit(
        digits.x_train.reshape(len(digits.x_train), -1).numpy(), digits.y_train.numpy()
    )
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), ProbaHandler)
    httpd.model, httpd.requests, httpd.labels_only = est, 0, labels_only  # type: ignore[attr-defined]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield httpd, digits
    finally:
        httpd.shutdown()
        httpd.server_close()
