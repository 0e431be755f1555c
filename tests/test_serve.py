"""The guard service end to end, over real HTTP (uvicorn on loopback), on the zoo MNIST CNN with a real
SQLite audit log: authentication and roles, strict input validation, rate limits, answers that match the
model, abstention, the audit-record count, metrics, revocation, and a schemathesis fuzz of the OpenAPI spec."""

from __future__ import annotations

import json

import httpx
import pytest
import torch

from bastion.serve.config import load_config
from bastion.serve.keys import create_key
from bastion.serve.server import build_app
from bastion.serve.store import Store
from serve_helpers import FakeClock, running

IMG = [[[0.5] * 28] * 28]  # one (1, 28, 28) input


@pytest.fixture(scope="module")
def service(tmp_path_factory, mnist_cnn, mnist):
    d = tmp_path_factory.mktemp("serve")
    store = Store(f"sqlite:///{d / 'serve.db'}")
    keys = {
        name: create_key(store, role, name)[0]
        for name, role in [
            ("client", "client"),
            ("admin", "admin"),
            ("burst", "client"),
            ("revoked", "client"),
            ("fuzz", "admin"),
        ]
    }
    cfg = load_config(
        None,
        limits={"rate": 20.0, "burst": 10, "max_batch": 16, "max_body_bytes": 200_000},
        drift={"window": 100, "permutations": 99},
    )
    clock = FakeClock()  # the key cache and the rate limits run on it: tests advance it instead of sleeping
    app, info = build_app(
        model=mnist_cnn, reference=mnist, config=cfg, store=store, spool=str(d / "spool.jsonl"), clock=clock
    )
    with running(app) as url:
        yield {"url": url, "keys": keys, "store": store, "app": app, "info": info, "clock": clock}


@pytest.fixture(autouse=True)
def _full_buckets(request):
    """Each test starts a minute later on the service's clock: every key's bucket is full, every cache expired."""
    if "service" in request.fixturenames:
        request.getfixturevalue("service")["clock"].advance(60.0)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_predictions_match_the_model_and_every_answer_is_audited(service, mnist_cnn, mnist):
    url, key, store = service["url"], service["keys"]["client"], service["store"]
    before = store.count_audit()
    x = mnist.x_test[:12]
    with httpx.Client(base_url=url, headers=auth(key), timeout=30) as c:
        single = c.post("/v1/predict", json={"inputs": x[0].tolist()})
        batch = c.post("/v1/predict", json={"inputs": x[1:12].tolist()})
    assert single.status_code == 200 and batch.status_code == 200, (single.text, batch.text)
    results = single.json()["results"] + batch.json()["results"]
    probs = torch.tensor([r["probabilities"] for r in results])
    expected = torch.softmax(mnist_cnn.logits(x).double(), 1)
    assert torch.allclose(probs.double(), expected, atol=1e-5)
    for r, want in zip(results, expected.argmax(1).tolist()):
        assert r["abstain"] or r["label"] == want
        assert set(r["scores"]) == {"confidence", "ood"} and r["action"] in ("answer", "flag", "abstain")
    assert store.count_audit() == before + 2  # one record per answered request, written before the answer
    rec = store.recent_audit(0)[-1]
    assert rec["n_inputs"] == 11 and len(json.loads(rec["abstain"])) == 11


def test_low_confidence_inputs_abstain_and_the_curve_is_served(service, mnist):
    url, keys = service["url"], service["keys"]
    with httpx.Client(base_url=url, timeout=30) as c:
        rc = c.get("/v1/admin/risk-coverage", headers=auth(keys["admin"])).json()
        # a blend of two digits is ambiguous: its confidence falls under the calibrated threshold
        blend = (0.5 * mnist.x_test[:16] + 0.5 * mnist.x_test[16:32]).clamp(0, 1)
        r = c.post("/v1/predict", json={"inputs": blend.tolist()}, headers=auth(keys["client"])).json()["results"]
    assert 0 < rc["coverage_at_threshold"] <= 1 and rc["risk_at_threshold"] <= rc["target_risk"]
    assert len(rc["coverage"]) == len(rc["risk"]) > 10
    low = [x for x in r if x["scores"]["confidence"] < rc["threshold"]]
    assert low, "no blended input fell under the confidence threshold"
    assert all(x["abstain"] and x["label"] is None and "low_confidence" in x["reasons"] for x in low)
    confident = [x for x in r if x["scores"]["confidence"] >= rc["threshold"]]
    assert all(not x["abstain"] for x in confident)  # the OOD policy here is flag, not abstain


def test_keys_and_roles(service):
    url, keys = service["url"], service["keys"]
    with httpx.Client(base_url=url, timeout=30) as c:
        body = {"inputs": IMG}
        assert c.post("/v1/predict", json=body).status_code == 401
        r = c.post("/v1/predict", json=body, headers=auth("bst_000000000000_nope"))
        assert r.status_code == 401 and "invalid" in r.json()["detail"]
        assert c.post("/v1/predict", json=body, headers={"Authorization": "Basic abc"}).status_code == 401
        for path in ("/metrics", "/dashboard", "/v1/admin/config", "/v1/admin/clients", "/v1/admin/events"):
            assert c.get(path).status_code == 401, path
            r = c.get(path, headers=auth(keys["client"]))
            assert r.status_code == 403 and "admin" in r.json()["detail"], path
            assert c.get(path, headers=auth(keys["admin"])).status_code == 200, path
        assert c.get("/health").json()["status"] == "ok"


def test_bad_inputs_get_4xx_with_a_message_and_no_audit_record(service):
    url, key, store = service["url"], service["keys"]["client"], service["store"]
    before = store.count_audit()
    good = IMG
    cases = {
        "wrong shape": ({"inputs": [[[0.5] * 27] * 28]}, 422, "shape"),
        "ragged": ({"inputs": [[[0.5] * 28, [0.5] * 3]]}, 422, "ragged"),
        "out of bounds": ({"inputs": [[[2.0] * 28] * 28]}, 422, "[0, 1]"),
        "strings": ({"inputs": [[["a"] * 28] * 28]}, 422, "numbers"),
        "missing field": ({"data": good}, 422, "inputs"),
        "extra field": ({"inputs": [good], "debug": True}, 422, "debug"),
        "empty": ({"inputs": []}, 422, "inputs"),
        "batch too large": ({"inputs": [good] * 17}, 413, "limit"),
    }
    clock = service["clock"]
    with httpx.Client(base_url=url, headers=auth(key), timeout=30) as c:
        for name, (body, status, words) in cases.items():
            clock.advance(1.0)  # a second apart: the rate limit is not what answers
            r = c.post("/v1/predict", json=body)
            assert r.status_code == status, (name, r.status_code, r.text)
            assert words in r.json()["detail"], (name, r.json())
        nan = '{"inputs": ' + json.dumps([[[0.5] * 28] * 27 + [[0.5] * 27 + ["NaN"]]]).replace('"NaN"', "NaN") + "}"
        r = c.post("/v1/predict", content=nan, headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and "NaN" in r.json()["detail"], r.text
        r = c.post("/v1/predict", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 422
        r = c.post(
            "/v1/predict", content=b"[" + b"0.5," * 100_000 + b"0]", headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 413 and "exceeds" in r.json()["detail"]
        chunks = (b"[" + b"0.5," * 10_000 for _ in range(10))  # no Content-Length: counted as it streams in
        r = c.post("/v1/predict", content=chunks, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "exceeds" in r.json()["detail"], r.text
    assert store.count_audit() == before
    for r_text in (r.text,):
        assert "Traceback" not in r_text


def test_rate_limit_answers_429_with_retry_after_and_refills_at_the_rate(service):
    # limits: rate 20 requests/s, burst 10; the service's clock moves only when this test advances it
    url, key, clock = service["url"], service["keys"]["burst"], service["clock"]
    body = {"inputs": IMG}
    with httpx.Client(base_url=url, headers=auth(key), timeout=30) as c:
        burst = [c.post("/v1/predict", json=body).status_code for _ in range(10)]
        limited = c.post("/v1/predict", json=body)
        clock.advance(0.04)  # 0.8 of a token (1/20 s per token)
        still = c.post("/v1/predict", json=body).status_code
        clock.advance(0.02)  # 1.2 tokens: one request passes, the next does not
        refilled = [c.post("/v1/predict", json=body).status_code for _ in range(2)]
    assert burst == [200] * 10, burst
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "1", limited.headers
    assert limited.json()["detail"] == "rate limit of 20 requests/s exceeded"
    assert still == 429 and refilled == [200, 429], (still, refilled)


def test_revoked_key_is_refused_once_the_key_cache_expires(service):
    from bastion.serve.keys import parse_key

    url, key, store, clock = service["url"], service["keys"]["revoked"], service["store"], service["clock"]
    body = {"inputs": IMG}
    with httpx.Client(base_url=url, headers=auth(key), timeout=30) as c:
        assert c.post("/v1/predict", json=body).status_code == 200
        assert store.revoke_key(parse_key(key)[0])
        clock.advance(1.9)  # the key cache keeps a row for 2 s
        cached = c.post("/v1/predict", json=body).status_code
        clock.advance(0.2)
        refused = c.post("/v1/predict", json=body)
    assert cached == 200 and refused.status_code == 401 and "revoked" in refused.json()["detail"]


def test_openapi_declares_the_bearer_scheme_and_every_protected_operation(service):
    url = service["url"]
    with httpx.Client(base_url=url, timeout=30) as c:
        spec = c.get("/openapi.json").json()
        scheme = spec["components"]["securitySchemes"]["bearer"]
        protected, public = [], []
        for path, operations in spec["paths"].items():
            for method, op in operations.items():
                (protected if "security" in op else public).append((method, path))
                if "security" in op:
                    assert op["security"] == [{"bearer": []}], (method, path, op["security"])
                    assert {"401", "403"} <= set(op["responses"]), (method, path)
                    # the declaration holds: no key, no answer
                    r = c.request(method.upper(), path, json={"inputs": IMG})
                    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer", (method, path)
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer", scheme
    assert public == [("get", "/health")], public
    admin = {"/metrics", "/dashboard", "/v1/admin/config", "/v1/admin/risk-coverage", "/v1/admin/clients"}
    assert {p for _, p in protected} >= admin | {"/v1/predict", "/v1/admin/events", "/v1/admin/drift"}, protected


def test_health_says_which_signals_run(service):
    health = httpx.get(service["url"] + "/health", timeout=30).json()
    assert health["status"] == "ok" and health["audit_store"] == "up"
    assert health["ood_signal"] is True and health["signals"]["ood"].startswith("on: ActivationDetector"), health
    assert health["signals"]["drift"] == "mmd on penultimate features", health
    assert set(health["signals"]) == {"confidence", "ood", "backdoor", "drift", "extraction", "output"}
    assert health["backdoor_signal"] is False and health["signals"]["backdoor"] == (
        "off: [backdoor] enabled = false (STRIP costs n_perturb=32 forward passes per input)"
    )


def test_keys_are_stored_only_as_salted_hashes(service):
    rows = service["store"].list_keys()
    secrets = [k.split("_", 2)[2] for k in service["keys"].values()]
    blob = json.dumps(rows, default=str)
    assert not any(s in blob for s in secrets)
    assert len({r["salt"] for r in rows}) == len(rows)


def test_metrics_in_prometheus_format(service):
    url, keys = service["url"], service["keys"]
    with httpx.Client(base_url=url, timeout=30) as c:
        c.post("/v1/predict", json={"inputs": IMG}, headers=auth(keys["client"]))
        text = c.get("/metrics", headers=auth(keys["admin"])).text
    for name in (
        "bastion_requests_total",
        "bastion_inputs_total",
        "bastion_abstentions_total",
        "bastion_request_latency_seconds_bucket",
        "bastion_drift_p_value",
        "bastion_audit_spooled",
        "bastion_clients_flagged",
    ):
        assert name in text, name
    assert 'bastion_requests_total{endpoint="/v1/predict",status="200"}' in text


# -- property-based fuzz of every endpoint in the OpenAPI spec --------------------------------------------------
def test_fuzz_every_endpoint_gets_no_5xx(service):
    """schemathesis generates requests (valid and invalid bodies, paths, queries; positive and negative data) for
    every operation of the served OpenAPI spec, sent with an admin key and without one: never a server error, and
    every 4xx is JSON with a message."""
    import schemathesis  # the test extra installs it: no silent skip
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_url(service["url"] + "/openapi.json")
    key = service["keys"]["fuzz"]
    seen: dict[str, int] = {}
    operations = [r.ok() for r in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/predict", "/health", "/metrics", "/dashboard", "/v1/admin/events"}
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _fuzz_check(op, mode, key, seen)()
            except Unsatisfiable:  # no invalid variant exists (an operation without parameters or body)
                assert mode == GenerationMode.NEGATIVE, op.label
    assert len(seen) == len(operations) and min(seen.values()) >= 2, seen  # every operation was exercised, and
    assert seen["POST /v1/predict"] >= 30 and seen["GET /v1/admin/events"] >= 30, seen  # those with inputs a lot


def _fuzz_check(op, mode, key: str, seen: dict[str, int]):
    """A hypothesis test of one operation in one generation mode (a function of its own: @given refuses a test
    with default arguments, the usual way to bind a loop variable)."""
    from hypothesis import HealthCheck, given, settings

    @given(case=op.as_strategy(generation_mode=mode))
    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
    def check(case):
        for headers in ({"Authorization": f"Bearer {key}"}, {}):
            response = case.call(headers=headers, timeout=30)
            seen[op.label] = seen.get(op.label, 0) + 1
            assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
            if 400 <= response.status_code < 500:
                assert response.json()["detail"], response.text

    return check
