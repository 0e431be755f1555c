"""Private inference through the service, for real: `bastion serve --model zoo:digits-logreg --encrypted` in its own
process on a loopback port, real TenSEAL on both sides, the real SQLite audit log. The client's predictions agree
with the plaintext model, the audit log holds no plaintext, the server never holds a secret key, tampered or foreign
ciphertexts get 4xx and the server keeps answering — including bytes that crash TenSEAL (shown to kill an unisolated
process), which the child-process evaluator absorbs."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from bastion.defenses.encrypted import CKKSParams, HEClient, HEError, HEServer, compile_model
from bastion.defenses.encrypted.http import EncryptedClient
from bastion.defenses.encrypted.isolation import IsolatedHEServer
from bastion.defenses.encrypted.protocol import pack, unpack
from bastion.defenses.encrypted.wire import decode_request, encode_request
from bastion.errors import UsageError
from bastion.models.zoo import load_zoo
from bastion.serve.keys import create_key, parse_key
from bastion.serve.store import Store
from serve_helpers import free_port

pytest.importorskip("tenseal", reason="the he extra (installed by the test extra) runs these")

BASTION = str(Path(sys.executable).parent / "bastion")
PREDICT, SPEC = "/v1/predict-encrypted", "/v1/encrypted/spec"
MAX_ENCRYPTED = 8_000_000  # the served limit: above one 360-sample request (~6 MB), far above max_body_bytes (2 MB)
GUARD_TOML = f"""
[limits]
max_encrypted_body_bytes = {MAX_ENCRYPTED}
"""


@pytest.fixture(scope="module")
def digits_logreg():
    return load_zoo("digits-logreg")


@pytest.fixture(scope="module")
def program(digits_logreg):
    return compile_model(digits_logreg.module, (1, 8, 8))


@pytest.fixture(scope="module")
def service(tmp_path_factory, digits_logreg):
    """`bastion serve --encrypted` in a process of its own (the zoo model is cached first, by the fixture)."""
    d = tmp_path_factory.mktemp("he-serve")
    db = f"sqlite:///{d / 'serve.db'}"
    store = Store(db)
    keys = {name: create_key(store, role, name)[0] for name, role in [("client", "client"), ("admin", "admin")]}
    (d / "guard.toml").write_text(GUARD_TOML)
    port = free_port()
    args = ["--model", "zoo:digits-logreg", "--encrypted", "--db", db, "--config", str(d / "guard.toml")]
    with (d / "serve.log").open("w") as log:
        proc = subprocess.Popen(
            [BASTION, "serve", *args, "--spool", str(d / "spool.jsonl"), "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            health = _wait_healthy(proc, url, d / "serve.log")
            yield {"url": url, "keys": keys, "store": store, "proc": proc, "health": health}
        finally:
            proc.terminate()
            proc.wait(60)
    log_text = (d / "serve.log").read_text()
    assert "Traceback" not in log_text, log_text[-3000:]
    assert "encrypted inference: CKKS N=4096, primes [39, 29, 39] bits, 128-bit security, depth 1" in log_text, log_text


def _wait_healthy(proc: subprocess.Popen, url: str, log: Path, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = httpx.get(url + "/health", timeout=2)
            if r.status_code == 200:
                return r.json()
        except httpx.TransportError:
            pass
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "bastion serve --encrypted did not come up"
        time.sleep(0.3)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _post(service, body, key: str | None = "client") -> httpx.Response:
    headers = {"Content-Type": "application/octet-stream", **(auth(service["keys"][key]) if key else {})}
    return httpx.post(service["url"] + PREDICT, content=body, headers=headers, timeout=120)


def _spec(service) -> dict:
    return httpx.get(service["url"] + SPEC, headers=auth(service["keys"]["client"]), timeout=30).json()


def _audit_rows(store: Store, request_ids: list[str]) -> list[dict]:
    import sqlalchemy as sa

    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(store.audit).where(store.audit.c.request_id.in_(request_ids)))
        return [dict(r._mapping) for r in rows]


def _hollow_vector(samples: int, scale_bits: int) -> bytes:
    """A CKKSVector message with a size and a scale but no ciphertext (protobuf: field 1 = size, field 3 = scale,
    field 2 — the ciphertext — left out). TenSEAL parses it; adding it to a real vector reads a ciphertext that
    is not there: SIGSEGV without the check in HEServer.evaluate that refuses it."""
    return b"\n\x01" + bytes([samples]) + b"\x19" + struct.pack("<d", 2.0**scale_bits)


# -- (a) end to end over HTTP --------------------------------------------------------------------------------------
def test_encrypted_predictions_agree_with_the_model_and_the_audit_holds_no_plaintext(
    service, digits, digits_logreg, program
):
    x = digits.x_test
    t0 = time.perf_counter()
    with EncryptedClient(service["url"], service["keys"]["client"]) as client:
        scores = client.predict(x)
        request_ids = client.last_request_ids
    seconds = time.perf_counter() - t0
    model_labels = digits_logreg.logits(x).argmax(1).numpy()
    agreement = float((scores.argmax(1) == model_labels).mean())
    print(f"\nencrypted digits-logreg over HTTP: {len(x)} samples, argmax agreement {agreement:.4f}, {seconds:.2f} s")
    assert scores.shape == (360, 10) and agreement >= 0.995, agreement
    assert np.abs(scores - program.plain(x.numpy())).max() < 0.05  # the logits themselves, to CKKS precision
    assert service["health"]["encrypted"] is True
    # one audit record per request, with the ciphertext body's fingerprint and nothing of the inputs or answers
    (record,) = _audit_rows(service["store"], request_ids)
    assert record["n_inputs"] == 360 and record["output_policy"] == "encrypted"
    assert record["key_id"] == parse_key(service["keys"]["client"])[0]
    for column in ("labels", "abstain", "reasons", "scores"):
        assert json.loads(record[column]) == [None] * 360, column
    assert json.loads(record["actions"]) == ["encrypted"] * 360
    assert record["input_sha256"] != hashlib.sha256(x.numpy().tobytes()).hexdigest()
    # every sample counts as one query of the key (its budget), as /v1/predict counts inputs
    clients = httpx.get(service["url"] + "/v1/admin/clients", headers=auth(service["keys"]["admin"]), timeout=30)
    (mine,) = [c for c in clients.json()["clients"] if c["client"] == record["key_id"]]
    assert mine["queries"] >= 360


# -- (b) no secret key on the server --------------------------------------------------------------------------------
def test_the_server_refuses_a_secret_key_and_caches_public_contexts_only(service, digits, program):
    client = HEClient(_spec(service))
    assert client.context.is_private()  # the client's own context has the secret key: the check below can fail
    private = client.context.serialize(save_secret_key=True)
    payload = client.encrypt(digits.x_test[:4].numpy())
    r = _post(service, encode_request(private, payload))
    assert r.status_code == 422 and "secret key" in r.json()["detail"], r.text
    assert _post(service, encode_request(client.public_context(), payload)).status_code == 200

    server = HEServer(program)
    local = HEClient(server.spec())
    server.evaluate(local.public_context(), local.encrypt(digits.x_test[:4].numpy()))
    with pytest.raises(HEError, match="secret key"):
        server.evaluate(local.context.serialize(save_secret_key=True), local.encrypt(digits.x_test[:4].numpy()))
    cached = list(server._contexts.values())
    assert len(cached) == 1 and not any(ctx.is_private() or ctx.has_secret_key() for ctx in cached)


# -- (c) tampering ---------------------------------------------------------------------------------------------------
def test_tampered_requests_get_4xx_and_the_server_keeps_answering(service, digits, program):
    spec = _spec(service)
    client = HEClient(spec)
    context, x = client.public_context(), digits.x_test[:5].numpy()
    payload = client.encrypt(x)
    n, ((size, vectors),) = unpack(payload)
    good = encode_request(context, payload)
    store = service["store"]
    before = store.count_audit()
    hollow = _hollow_vector(size, spec["params"]["scale_bits"])
    cases = {
        "garbage": b"garbage" * 10,
        "garbage context": encode_request(b"garbage" * 10, payload),
        "truncated body": good[: len(good) // 2],
        "truncated context": good[:1000],
        "context length flipped": good[:4] + bytes([good[4] ^ 0xFF]) + good[5:],
        "payload magic flipped": good[: 12 + len(context)] + b"XHE1" + good[16 + len(context) :],
        "63 ciphertexts for 64 features": encode_request(context, pack(n, [(size, vectors[:-1])])),
        "a garbage ciphertext": encode_request(context, pack(n, [(size, [*vectors[:-1], b"garbage" * 10])])),
        "a truncated ciphertext": encode_request(context, pack(n, [(size, [*vectors[:-1], vectors[-1][:500]])])),
        "a ciphertext that crashes TenSEAL": encode_request(context, pack(n, [(size, [*vectors[:-1], hollow])])),
    }
    for name, body in cases.items():
        r = _post(service, body)
        assert r.status_code == 422 and r.json()["detail"], (name, r.status_code, r.text[:300])
    # byte flips inside a ciphertext: CKKS has no integrity, so a flip may decode to noise (200) — never a 5xx
    rng = np.random.default_rng(0)
    flipped = []
    for _ in range(6):
        blob = bytearray(vectors[-1])
        blob[int(rng.integers(0, len(blob)))] ^= 0xFF
        r = _post(service, encode_request(context, pack(n, [(size, [*vectors[:-1], bytes(blob)])])))
        assert r.status_code in (200, 422) and (r.status_code == 200 or r.json()["detail"]), r.text[:300]
        flipped.append(r.status_code)
    assert 422 in flipped, flipped
    assert service["proc"].poll() is None  # the server process lives
    r = _post(service, good)
    assert r.status_code == 200, r.text[:300]
    assert r.headers["X-Bastion-Samples"] == "5" and len(r.headers["X-Request-Id"]) == 32
    assert np.abs(client.decrypt(r.content) - program.plain(x)).max() < 0.05
    # refused requests leave no audit record; the answered ones (flips that decoded, the good one) one each
    assert store.count_audit() == before + flipped.count(200) + 1
    (record,) = _audit_rows(store, [r.headers["X-Request-Id"]])
    assert record["input_sha256"] == hashlib.sha256(good).hexdigest()  # the ciphertexts' fingerprint


# -- (d) other CKKS parameters --------------------------------------------------------------------------------------
def test_a_context_or_ciphertexts_of_other_parameters_get_422(service, digits):
    spec = _spec(service)
    mine, x = HEClient(spec), digits.x_test[:3].numpy()
    for params in [(8192, (50, 40, 50), 40), (4096, (40, 28, 40), 28)]:  # another ring degree; other primes
        other = HEClient({**spec, "params": CKKSParams(*params).as_dict()})
        r = _post(service, encode_request(other.public_context(), mine.encrypt(x)))
        assert r.status_code == 422 and "CKKS parameters" in r.json()["detail"], (params, r.text)
    r = _post(
        service, encode_request(mine.public_context(), other.encrypt(x))
    )  # the right context, foreign ciphertexts
    assert r.status_code == 422 and "does not belong" in r.json()["detail"], r.text
    assert _post(service, encode_request(mine.public_context(), mine.encrypt(x))).status_code == 200


# -- (e) limits and keys ---------------------------------------------------------------------------------------------
def test_the_encrypted_body_limit_is_its_own_and_keys_are_required(service, digits):
    client = HEClient(_spec(service))
    big = encode_request(client.public_context(), client.encrypt(digits.x_test))
    assert 2_000_000 < len(big) < MAX_ENCRYPTED  # over max_body_bytes, under max_encrypted_body_bytes
    assert _post(service, big).status_code == 200
    over = _post(service, b"\0" * (MAX_ENCRYPTED + 1))
    assert over.status_code == 413 and "exceeds the limit of 8000000 bytes" in over.json()["detail"], over.text
    streamed = _post(service, (b"\0" * 1_000_000 for _ in range(9)))  # no Content-Length: counted as it streams
    assert streamed.status_code == 413 and "exceeds" in streamed.json()["detail"], streamed.text
    plain = httpx.post(
        service["url"] + "/v1/predict",
        content=b"[" + b"0.5," * 600_000 + b"0]",
        headers=auth(service["keys"]["client"]),
    )
    assert plain.status_code == 413  # max_body_bytes still applies to every other endpoint
    for path, call in ((SPEC, httpx.get), (PREDICT, httpx.post)):
        r = call(service["url"] + path, timeout=30)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer", (path, r.text)
        assert call(service["url"] + path, headers=auth("bst_000000000000_nope"), timeout=30).status_code == 401
    for key in ("client", "admin"):
        r = httpx.get(service["url"] + SPEC, headers=auth(service["keys"][key]), timeout=30)
        assert r.status_code == 200 and r.json()["security_bits"] == 128 and r.json()["input_dim"] == 64


def test_openapi_declares_the_encrypted_operations_and_fuzzing_them_gets_no_5xx(service):
    import schemathesis
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation import GenerationMode

    spec = httpx.get(service["url"] + "/openapi.json", timeout=30).json()
    op = spec["paths"][PREDICT]["post"]
    assert op["security"] == [{"bearer": []}] and {"401", "403", "413", "422"} <= set(op["responses"])
    assert op["requestBody"]["content"]["application/octet-stream"]["schema"]["format"] == "binary"
    assert spec["paths"][SPEC]["get"]["security"] == [{"bearer": []}]
    schema = schemathesis.openapi.from_url(service["url"] + "/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations() if r.ok().path in (PREDICT, SPEC)]
    statuses: list[int] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _fuzz_check(operation, mode, service["keys"]["client"], statuses)()
            except Unsatisfiable:  # no invalid variant of an operation without parameters or body
                assert mode == GenerationMode.NEGATIVE and operation.path == SPEC, operation.label
    assert len(operations) == 2 and 422 in statuses and 200 in statuses, statuses


def _fuzz_check(operation, mode, key: str, statuses: list[int]):
    """A hypothesis test of one operation (a function of its own: @given refuses default arguments)."""
    from hypothesis import HealthCheck, given, settings

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
    def check(case):
        response = case.call(headers=auth(key), timeout=60)
        statuses.append(response.status_code)
        assert response.status_code < 500, (operation.label, response.status_code, response.text[:300])
        if response.status_code >= 400:
            assert response.json()["detail"], response.text

    return check


# -- (f) a model CKKS cannot evaluate --------------------------------------------------------------------------------
def test_serve_encrypted_refuses_a_relu_model_naming_the_layer(tmp_path, digits_mlp):
    port = ["--port", str(free_port())]
    r = subprocess.run(
        [BASTION, "serve", "--model", "zoo:digits-mlp", "--encrypted", "--db", f"sqlite:///{tmp_path / 's.db'}", *port],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("error: layer 2 (ReLU) cannot be evaluated on CKKS ciphertexts"), r.stderr
    assert "--he-friendly" in r.stderr and "Traceback" not in r.stderr and "guard calibrated" not in r.stderr


# -- (g) the framing and the isolation -------------------------------------------------------------------------------
def test_request_framing_round_trips_and_refuses_malformed_bodies():
    context, payload = b"C" * 300, b"P" * 70
    body = encode_request(context, payload)
    assert body[:4] == b"BHQ1" and struct.unpack(">Q", body[4:12])[0] == 300 and len(body) == 12 + 300 + 70
    assert decode_request(body) == (context, payload)
    bad = {
        "empty": b"",
        "short": b"BHQ1\0\0",
        "magic": b"XHQ1" + body[4:],
        "context runs past the end": b"BHQ1" + struct.pack(">Q", 371) + context + payload,
        "no payload": b"BHQ1" + struct.pack(">Q", 300) + context,
        "empty context": b"BHQ1" + struct.pack(">Q", 0) + payload,
        "huge length": b"BHQ1" + struct.pack(">Q", 2**64 - 1) + context + payload,
    }
    for name, data in bad.items():
        with pytest.raises(HEError) as info:
            decode_request(data)
        assert "encrypted request" in str(info.value), name
    with pytest.raises(HEError):
        encode_request(b"", payload)


def test_isolated_server_survives_a_crashing_evaluator(digits_logreg, digits, program):
    x = digits.x_test[:5].numpy()
    with IsolatedHEServer(program, model="digits-logreg") as server:
        client = HEClient(server.spec())
        context, payload = client.public_context(), client.encrypt(x)
        n, ((size, vectors),) = unpack(payload)
        assert server.samples(payload) == 5
        with pytest.raises(HEError, match="context could not be read"):  # refused in the child: no crash
            server.evaluate(b"garbage" * 10, payload)
        assert server.restarts == 0
        # a vector message without its ciphertext: TenSEAL parses it, and adding it to a real vector reads a
        # ciphertext that is not there (SIGSEGV); HEServer refuses it before computing
        hollow = _hollow_vector(size, program.params.scale_bits)
        with pytest.raises(HEError, match="exactly one ciphertext"):
            server.evaluate(context, pack(n, [(size, [*vectors[:-1], hollow])]))
        assert server.restarts == 0
        # whatever else kills the evaluator (a parser bug not yet known): the child dies, the request is refused,
        # a fresh child answers the next one
        os.kill(server._child_pid(), signal.SIGSEGV)
        with pytest.raises(HEError, match=r"\(the evaluator rejected it\)"):
            server.evaluate(context, payload)
        assert server.restarts == 1  # the child died and was replaced
        assert np.abs(client.decrypt(server.evaluate(context, payload)) - program.plain(x)).max() < 0.05
        server.timeout = 1e-3  # an evaluation past the timeout: the child is killed, the request refused
        with pytest.raises(HEError, match="took longer"):
            server.evaluate(context, payload)
        server.timeout = 300.0
        assert server.restarts == 2
        assert np.abs(client.decrypt(server.evaluate(context, payload)) - program.plain(x)).max() < 0.05
    with pytest.raises(UsageError, match="closed"):
        server.evaluate(context, payload)


def test_encrypted_client_says_what_went_wrong(service):
    with pytest.raises(UsageError, match="HTTP 401"):
        EncryptedClient(service["url"], "bst_000000000000_nope")
    with pytest.raises(UsageError, match="cannot reach"):
        EncryptedClient(f"http://127.0.0.1:{free_port()}", "k", timeout=5)
    with EncryptedClient(service["url"], service["keys"]["client"], batch_size=2) as client:
        assert "bst_" not in repr(client)
        with pytest.raises(UsageError, match=r"x must be \(n, 1, 8, 8\)"):
            client.predict(np.zeros((2, 3)))
        assert client.predict(np.full((5, 1, 8, 8), 0.5)).shape == (5, 10) and len(client.last_request_ids) == 3
