"""The guard's ``[output]`` policies over real HTTP (uvicorn on loopback, SQLite audit log), on the zoo digits-mlp:
the answers go through the policy (label-only: no probabilities, and an attacker's RemoteClassifier falls back to
its label-only mode; prediction poisoning: within epsilon of the model's probabilities, the label kept), the audit
log names the policy, and guard.toml's ``[output]`` errors name the key. Also PRADA's ``queries_until_flagged``."""

from __future__ import annotations

import json

import httpx
import pytest
import torch

from bastion.errors import UsageError
from bastion.models.remote import RemoteClassifier
from bastion.serve.config import load_config, render_config
from bastion.serve.extraction import ExtractionMonitor, queries_until_flagged
from bastion.serve.keys import create_key
from bastion.serve.server import build_app
from bastion.serve.store import Store
from serve_helpers import FakeClock, running


@pytest.fixture(scope="module", params=["label-only", "prediction-poisoning"])
def served(request, tmp_path_factory, digits_mlp, digits):
    d = tmp_path_factory.mktemp("serve-output")
    store = Store(f"sqlite:///{d / 'serve.db'}")
    key = create_key(store, "client", "thief")[0]
    admin = create_key(store, "admin", "ops")[0]
    output = {"policy": request.param} | ({"epsilon": 0.5} if request.param == "prediction-poisoning" else {})
    cfg = load_config(None, output=output, confidence={"action": "flag"}, drift={"window": 100, "permutations": 99})
    app, info = build_app(
        model=digits_mlp, reference=digits, config=cfg, store=store, spool=str(d / "spool.jsonl"), clock=FakeClock()
    )
    with running(app) as url:
        yield {"policy": request.param, "url": url, "key": key, "admin": admin, "store": store, "info": info}


def test_answers_go_through_the_policy_and_the_audit_log_names_it(served, digits_mlp, digits):
    x = digits.x_test[:40]
    thief = RemoteClassifier(
        served["url"] + "/v1/predict", input_shape=(1, 8, 8), n_classes=10, api_key=served["key"], batch_size=20
    )
    with thief:
        returned = thief.proba(x).double()
    want = digits_mlp.predict(x)
    true = digits_mlp.proba(x).double()
    assert torch.equal(returned.argmax(1), want)  # the label is the model's
    with httpx.Client(base_url=served["url"], headers={"Authorization": f"Bearer {served['key']}"}) as c:
        one = c.post("/v1/predict", json={"inputs": x[:1].tolist()}).json()["results"][0]
    rec = served["store"].recent_audit(0)[-1]
    if served["policy"] == "label-only":
        assert thief.label_only and "probabilities" not in one
        assert torch.equal(returned, torch.nn.functional.one_hot(want, 10).double())
        assert one["scores"]["confidence"] == 1.0  # the raw confidence is not leaked through the scores
        assert rec["output_policy"] == "label-only"
    else:
        assert not thief.label_only
        l1 = (returned - true).abs().sum(1)
        assert float(l1.max()) <= 0.5 + 1e-4 and float(l1.mean()) > 0.4  # inside the ball, and using it
        assert one["scores"]["confidence"] == pytest.approx(max(one["probabilities"]), abs=1e-6)
        assert rec["output_policy"] == (
            "prediction-poisoning(epsilon=0.5, surrogate='served architecture, initialised afresh', "
            "surrogate_layers='last')"
        )
    assert "probabilit" not in json.dumps({k: v for k, v in rec.items() if k != "output_policy"})
    assert served["info"]["signals"]["output"] == f"on: {rec['output_policy']}, the label kept"


def test_output_section_errors_name_the_key():
    with pytest.raises(UsageError, match=r"\[output\] policy must be one of none, round, .* got 'rnd' \(did you mean"):
        load_config(None, output={"policy": "rnd"})
    with pytest.raises(UsageError, match=r'\[output\] beta applies to policy = "reverse-sigmoid" only, but policy'):
        load_config(None, output={"policy": "round", "beta": 2.0})
    with pytest.raises(UsageError, match=r"\[output\] decimals must be a whole number >= 0 and <= 6, got 9"):
        load_config(None, output={"policy": "round", "decimals": 9})
    with pytest.raises(UsageError, match=r"\[output\] epsilon must be a number > 0 and <= 2, got 3.0"):
        load_config(None, output={"policy": "prediction-poisoning", "epsilon": 3.0})
    with pytest.raises(UsageError, match=r"\[output\] surrogate_layers must be one of last, all, got 'first'"):
        load_config(None, output={"policy": "prediction-poisoning", "surrogate_layers": "first"})
    with pytest.raises(UsageError, match=r"unknown key 'polcy' in \[output\] \(did you mean 'policy'\?\)"):
        load_config(None, output={"polcy": "round"})
    assert load_config(None, output={"policy": "top-k", "k": 3, "renormalize": False}).output.k == 3
    rendered = render_config()
    assert "[output]" in rendered and 'policy = "none"' in rendered and "surrogate_layers = " in rendered


def test_queries_until_flagged_replays_a_stream_like_the_monitor(mnist_cnn, mnist):
    """Synthetic queries around a few seeds (sign steps of 0.1, as Jacobian augmentation makes) are flagged; the
    index is the monitor's own flagged_at for any request size; natural test images are not flagged."""
    g = torch.Generator().manual_seed(0)
    seeds = mnist.x_test[:20]
    steps = 0.1 * torch.randint(0, 2, (300, 1, 28, 28), generator=g).float().mul(2).sub(1)
    synthetic = (seeds[torch.arange(300) % 20] + steps).clamp(0, 1)
    stream = torch.cat([seeds, synthetic])
    at = queries_until_flagged({"delta": 0.9}, stream, mnist_cnn.predict)
    assert at is not None and at % 10 == 0 and 100 <= at <= 320
    assert queries_until_flagged(load_config().extraction, stream, mnist_cnn.predict, batch_size=7) == at
    monitor = ExtractionMonitor(delta=0.9)
    for i in range(at):  # query by query, by hand
        monitor.observe("c", stream[i : i + 1], mnist_cnn.predict(stream[i : i + 1]))
    assert monitor.status("c")["flagged_at"] == at
    assert queries_until_flagged({"delta": 0.9}, mnist.x_test[:300], mnist_cnn.predict) is None
    with pytest.raises(UsageError, match="monitor_config must be an ExtractionConfig or a mapping"):
        queries_until_flagged(0.9, stream, mnist_cnn.predict)
