"""Extraction end to end over HTTP against the guard service itself (uvicorn on loopback, SQLite audit log): Knockoff
Nets steals the served digits-mlp through ``/v1/predict`` with a small budget, with the probabilities and against a
label-only ``[output]`` policy (the thief loaded as the CLI loads it, its key from ``BASTION_API_KEY``); every query the thief counts is an input the guard answered and logged, and PRADA
lets a thief that queries natural images through (as measured in ``benchmarks/extraction_eval.py``)."""

from __future__ import annotations

import pytest
import torch

from bastion.attacks.extraction import KnockoffNets
from bastion.models.loading import load_model
from bastion.models.remote import RemoteClassifier
from bastion.serve.config import load_config
from bastion.serve.keys import create_key
from bastion.serve.server import build_app
from bastion.serve.store import Store
from serve_helpers import FakeClock, running

BUDGET = 300


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("policy", ["none", "label-only"])
def test_knockoff_steals_the_served_model_through_the_guard(tmp_path, monkeypatch, digits_mlp, digits, policy):
    store = Store(f"sqlite:///{tmp_path / 'serve.db'}")
    key = create_key(store, "client", "thief")[0]
    cfg = load_config(None, output={"policy": policy}, confidence={"action": "flag"})
    app, _ = build_app(
        model=digits_mlp,
        reference=digits,
        config=cfg,
        store=store,
        spool=str(tmp_path / "spool.jsonl"),
        clock=FakeClock(),
    )
    with running(app) as url:
        if policy == "none":
            victim = RemoteClassifier(url + "/v1/predict", input_shape=(1, 8, 8), n_classes=10, api_key=key)
        else:  # as the CLI loads it: the key from the environment
            monkeypatch.setenv("BASTION_API_KEY", key)
            victim = load_model(url + "/v1/predict", input_shape=(1, 8, 8), n_classes=10)
        with victim:
            attack = KnockoffNets(pool=digits.x_train, copy="digits-mlp", labels_only=policy != "none", seed=0)
            result = attack.extract(victim, BUDGET, eval_x=digits.x_test, eval_y=digits.y_test)
        logged = sum(r["n_inputs"] for r in store.recent_audit(0))
    n_eval = digits.x_test.shape[0]
    assert result.queries == BUDGET and victim.n_queries == BUDGET + n_eval
    assert logged == victim.n_queries  # every query answered over HTTP has its audit record
    assert victim.label_only == (policy == "label-only")
    # the copy agrees with the served model far above chance (a random-label copy: ~0.1), as a local theft does
    local = digits_mlp.predict(digits.x_test)
    agreement = float((result.stolen.predict(digits.x_test) == local).double().mean())
    assert result.fidelity == pytest.approx(agreement)
    assert result.fidelity >= 0.85
