"""``POST /v1/predict``: one input or a batch, as nested lists in the model's input shape, answered with each
input's label (null when the guard abstains), probabilities, reasons, scores and action, the request id and the
client's status — once the request's audit record is durable.

No postponed annotations here: FastAPI reads the endpoint's signature at run time.
"""

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, Security
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ..auth import Auth
from ..http_errors import ERRORS, ApiError
from ..keys import KeyInfo
from ..service import Service

__all__ = ["PredictRequest", "PredictResponse", "Result", "audit_record", "parse_inputs", "router"]


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: list[Any] = Field(
        ...,
        min_length=1,
        description="One input, or a batch of inputs, as nested lists in the model's input shape.",
    )


class Result(BaseModel):
    label: int | None
    probabilities: list[float] | None = Field(
        default=None, description="Absent when the output policy is label-only ([output] policy)."
    )
    abstain: bool
    reasons: list[str]
    scores: dict[str, float]
    action: str


class PredictResponse(BaseModel):
    request_id: str
    results: list[Result]
    client: dict[str, Any]


def parse_inputs(raw: list[Any], shape: tuple[int, ...], bounds: tuple[float, float], max_batch: int) -> torch.Tensor:
    """The request's inputs as a float32 batch of ``shape``; :class:`ApiError` 422 (not numbers, wrong shape,
    NaN, out of ``bounds``) or 413 (more than ``max_batch`` inputs) with a message that says what to send."""
    dims = ", ".join(map(str, shape))
    try:
        arr = np.asarray(raw, dtype=np.float32)
    except (ValueError, TypeError):
        raise ApiError(
            422,
            f"inputs must be numbers in nested lists of shape {list(shape)} (one input) or "
            f"[n, {dims}] (a batch); got ragged or non-numeric lists",
        ) from None
    if arr.shape == shape:
        arr = arr[None]
    if arr.shape[1:] != shape:
        raise ApiError(
            422, f"input shape {list(arr.shape)} does not match the model's {list(shape)} (or [n, {dims}] for a batch)"
        )
    if arr.shape[0] > max_batch:
        raise ApiError(413, f"batch of {arr.shape[0]} inputs exceeds the limit of {max_batch}")
    if not np.isfinite(arr).all():
        raise ApiError(422, "inputs contain NaN or infinite values")
    lo, hi = bounds
    if arr.min() < lo - 1e-6 or arr.max() > hi + 1e-6:
        raise ApiError(
            422, f"input values must lie in [{lo:g}, {hi:g}] (got {float(arr.min()):g} to {float(arr.max()):g})"
        )
    return torch.from_numpy(np.ascontiguousarray(arr))


# the audit record's JSON columns and the result field each lists, one entry per input
_RECORD_COLUMNS = {
    "labels": "label",
    "abstain": "abstain",
    "actions": "action",
    "reasons": "reasons",
    "scores": "scores",
}


def audit_record(
    request_id: str,
    key_id: str,
    x: torch.Tensor,
    results: Sequence[Mapping[str, Any]],
    latency: float,
    client_status: str,
    output_policy: str = "none",
) -> dict[str, Any]:
    """The audit log's row for one answered request (the inputs as a SHA-256 fingerprint of their float32 bytes;
    ``output_policy`` names the policy the probabilities went through, not the probabilities)."""
    return {
        "request_id": request_id,
        "ts": time.time(),
        "key_id": key_id,
        "input_sha256": hashlib.sha256(x.numpy().tobytes()).hexdigest(),
        "n_inputs": int(x.shape[0]),
        **{col: _dumps([r[field] for r in results]) for col, field in _RECORD_COLUMNS.items()},
        "latency_ms": round(latency * 1000, 3),
        "client_status": client_status,
        "output_policy": output_policy,
    }


def newly_flagged(status: Mapping[str, Any], n_inputs: int) -> bool:
    """Whether the client was flagged by this request's ``n_inputs`` queries (so its event is written once)."""
    at = status.get("flagged_at")
    return bool(status.get("flagged")) and at is not None and status["queries"] - n_inputs < at <= status["queries"]


def router(svc: Service, auth: Auth) -> APIRouter:
    """The predict endpoint of ``svc``; the client key (``auth.client``) has already applied the client policy."""
    api = APIRouter(tags=["predict"])
    guard, limits = svc.guard, svc.guard.config.limits

    @api.post("/v1/predict", response_model=PredictResponse, responses=ERRORS)
    async def predict(body: PredictRequest, key: KeyInfo = Security(auth.client)) -> Any:
        t0 = time.perf_counter()
        x = parse_inputs(body.inputs, guard.input_shape, guard.bounds, limits.max_batch)
        results, status = await asyncio.wrap_future(guard.submit(x, key.id))
        if newly_flagged(status, int(x.shape[0])):
            svc.telemetry.clients_flagged.inc()
            await asyncio.to_thread(svc.events.add, "extraction", {"key_id": key.id, **status})
        request_id = uuid.uuid4().hex
        client_status = guard.client_policy(key.id, status).status
        latency = time.perf_counter() - t0
        record = audit_record(request_id, key.id, x, results, latency, client_status, guard.output_description)
        try:
            await asyncio.wrap_future(svc.audit.submit(record))
        except RuntimeError:
            raise ApiError(503, "the audit log cannot be written; try again later", {"Retry-After": "5"}) from None
        svc.series.add(1, len(results), sum(r["abstain"] for r in results), sum(bool(r["reasons"]) for r in results))
        svc.telemetry.answered(results, time.perf_counter() - t0)
        # built here rather than validated again against PredictResponse (which still documents it in the spec)
        client = {"queries": status.get("queries"), "status": client_status}
        return JSONResponse({"request_id": request_id, "results": results, "client": client})

    return api


def _dumps(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"))
