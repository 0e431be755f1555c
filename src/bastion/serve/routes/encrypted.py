"""Private inference (``bastion serve --encrypted``): ``GET /v1/encrypted/spec`` and ``POST /v1/predict-encrypted``.

The client encrypts its inputs under CKKS with its own secret key (:mod:`bastion.defenses.encrypted`), the service
evaluates the compiled model on the ciphertexts and answers ciphertexts of the scores that only the client can
decrypt. The service never sees an input, a score or a label, so the guard's per-input signals (confidence, OOD,
backdoor, drift, PRADA's distances) cannot run on these requests; what still applies is everything that needs no
plaintext: the API keys, the client policy and rate limits of ``/v1/predict``, the key's query budget (each sample
counts as one query), a body limit of its own (``limits.max_encrypted_body_bytes``) and one audit record per
answered request (the SHA-256 of the body, the number of samples, no labels or scores: ``"encrypted"``).

The body is :func:`~bastion.defenses.encrypted.wire.encode_request`'s framing; the evaluation runs in a child
process (:class:`~bastion.defenses.encrypted.isolation.IsolatedHEServer`), one request at a time, off the event
loop, so bytes that crash TenSEAL answer 422 and the service stays up.

No postponed annotations here: FastAPI reads the endpoints' signatures at run time.
"""

import asyncio
import hashlib
import json
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request, Security
from fastapi.responses import Response

from ...defenses.encrypted.protocol import HEError
from ...defenses.encrypted.wire import MEDIA_TYPE, decode_request
from ...errors import UsageError
from ..auth import Auth
from ..http_errors import ERRORS, ApiError
from ..keys import KeyInfo
from ..service import Service

__all__ = ["PREDICT_PATH", "SPEC_PATH", "encrypted_record", "router"]

PREDICT_PATH = "/v1/predict-encrypted"
SPEC_PATH = "/v1/encrypted/spec"
OUTPUT_POLICY = "encrypted"
_BINARY = {MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}
_REQUEST_BODY = {
    "required": True,
    "description": "b'BHQ1', the public context's length (u64, big-endian), the public context "
    "(HEClient.public_context()), then the ciphertexts (HEClient.encrypt()): "
    "bastion.defenses.encrypted.wire.encode_request.",
    "content": _BINARY,
}
_ANSWER = {
    "description": "The encrypted scores (logits), for HEClient.decrypt(); headers X-Request-Id, X-Bastion-Samples "
    "and X-Bastion-Client-Status.",
    "content": _BINARY,
}


def encrypted_record(
    request_id: str, key_id: str, body: bytes, n: int, latency: float, client_status: str
) -> dict[str, Any]:
    """The audit log's row for one answered encrypted request: the body's SHA-256 (ciphertexts, not inputs), the
    number of samples, and per sample what the service knows of its answer — nothing (labels, abstentions, reasons
    and scores null, the action ``"encrypted"``)."""
    unknown = _dumps([None] * n)
    return {
        "request_id": request_id,
        "ts": time.time(),
        "key_id": key_id,
        "input_sha256": hashlib.sha256(body).hexdigest(),
        "n_inputs": n,
        "labels": unknown,
        "abstain": unknown,
        "actions": _dumps([OUTPUT_POLICY] * n),
        "reasons": unknown,
        "scores": unknown,
        "latency_ms": round(latency * 1000, 3),
        "client_status": client_status,
        "output_policy": OUTPUT_POLICY,
    }


def router(svc: Service, auth: Auth) -> APIRouter:
    """The encrypted endpoints of ``svc`` (whose ``he`` is the evaluator); ``auth.client`` applies the client
    policy and the rate limit as on ``/v1/predict``."""
    api = APIRouter(tags=["encrypted"])
    he, guard = svc.he, svc.guard
    one_at_a_time = asyncio.Lock()  # the evaluator takes one request at a time: the others wait here, not in threads

    @api.get(SPEC_PATH, responses=ERRORS)
    async def encrypted_spec(key: KeyInfo = Security(auth.key)) -> dict[str, Any]:
        """What an encrypting client needs: the CKKS parameters (128-bit security), the input and output sizes,
        the model's multiplicative depth and the slot layout (bastion.defenses.encrypted.HEClient takes it)."""
        return he.spec()

    @api.post(
        PREDICT_PATH,
        response_class=Response,
        responses={200: _ANSWER, **ERRORS},
        openapi_extra={"requestBody": _REQUEST_BODY},
    )
    async def predict_encrypted(request: Request, key: KeyInfo = Security(auth.client)) -> Response:
        """The model on CKKS ciphertexts: encrypted inputs in, encrypted scores out; 422 for a request the
        evaluator cannot read (malformed, other parameters, a secret key in the context, corrupt ciphertexts)."""
        t0 = time.perf_counter()
        body = await request.body()
        n, reply = await _evaluate(he, body, one_at_a_time)
        status = guard.count_queries(key.id, n)
        client_status = guard.client_policy(key.id, status).status
        request_id = uuid.uuid4().hex
        record = encrypted_record(request_id, key.id, body, n, time.perf_counter() - t0, client_status)
        try:
            await asyncio.wrap_future(svc.audit.submit(record))
        except RuntimeError:
            raise ApiError(503, "the audit log cannot be written; try again later", {"Retry-After": "5"}) from None
        svc.series.add(1, n)
        svc.telemetry.answered_encrypted(n)
        headers = {"X-Request-Id": request_id, "X-Bastion-Samples": str(n), "X-Bastion-Client-Status": client_status}
        return Response(reply, media_type=MEDIA_TYPE, headers=headers)

    return api


async def _evaluate(he: Any, body: bytes, lock: asyncio.Lock) -> tuple[int, bytes]:
    """``(samples, reply)`` for one request body: the framing checked here, the ciphertexts evaluated in the
    evaluator's process; :class:`ApiError` 422 with the evaluator's message, 503 while it shuts down."""
    try:
        context, payload, n = await asyncio.to_thread(_parse, he, body)  # copies up to the body limit: off the loop
        async with lock:
            return n, await asyncio.to_thread(he.evaluate, context, payload)
    except HEError as exc:
        raise ApiError(422, str(exc)) from None
    except UsageError:  # the evaluator was closed: the service is shutting down
        raise ApiError(503, "the encrypted evaluator is stopping; try again shortly", {"Retry-After": "5"}) from None


def _parse(he: Any, body: bytes) -> tuple[bytes, bytes, int]:
    """The body's context and payload, and the number of samples the payload frames (checked in pure Python)."""
    context, payload = decode_request(body)
    return context, payload, he.samples(payload)


def _dumps(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"))
