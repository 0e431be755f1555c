"""The guard service: FastAPI on uvicorn, in front of one model (no postponed annotations here: FastAPI reads
the endpoint signatures at run time).

Endpoints (OpenAPI at ``/openapi.json``, docs at ``/docs``):

- ``POST /v1/predict`` (client or admin key): ``{"inputs": [...]}`` — one input or a batch, nested lists
  in the model's input shape — answered with ``{"results": [...], "request_id": ..., "client": {...}}``.
- ``GET /health`` (no key): liveness, and whether the audit store is reachable.
- ``GET /metrics`` (admin): Prometheus text format.
- ``GET /dashboard`` (admin): an HTML page of traffic, abstentions, flags, drift, detector scores and
  flagged clients (server-rendered SVG, no script, no external resource).
- ``GET /v1/admin/config``, ``/v1/admin/risk-coverage``, ``/v1/admin/clients``, ``/v1/admin/events``
  (admin): the guard's settings and calibration, the risk-coverage curve the confidence threshold was
  chosen from, per-client extraction status, drift and client events.

Client mistakes get 4xx with a message (401 no or bad key, 403 wrong role or blocked client, 413 body
too large, 422 malformed input, 429 over the rate with ``Retry-After``); responses never carry stack
traces. A request is answered only after its audit record is durable (database, or the local spool
while the database is down); 503 only when neither can be written.
"""

import asyncio
import contextlib
import hashlib
import math
import time
import uuid
from typing import Any

import numpy as np
import torch

from ..errors import UsageError

__all__ = ["create_app"]


def create_app(guard: Any, store: Any, *, spool: str, title: str = "bastion guard") -> Any:
    """The FastAPI application around a calibrated :class:`~bastion.serve.guard.Guard` and a
    :class:`~bastion.serve.store.Store`."""
    try:
        from fastapi import Depends, FastAPI, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
        from pydantic import BaseModel, ConfigDict, Field
        from starlette.exceptions import HTTPException as StarletteHTTPException
    except ImportError as exc:  # pragma: no cover - the service extra is missing
        raise UsageError(
            f"bastion serve needs the service extra ({exc.name} is missing): pip install 'bastion[service]'"
        ) from None

    from .auditlog import AuditLog
    from .dashboard import render_dashboard
    from .keys import KeyInfo, KeyRing, KeyStoreUnavailable
    from .plumbing import BodyLimit, Events, Series, TokenBucket

    cfg = guard.config
    limits = cfg.limits
    keyring = KeyRing(store)
    audit = AuditLog(store, spool)
    buckets = TokenBucket()
    events = Events(store)
    series = Series()
    registry = CollectorRegistry()
    m_requests = Counter(
        "bastion_requests", "Requests answered, by endpoint and status code", ["endpoint", "status"], registry=registry
    )
    m_inputs = Counter("bastion_inputs", "Inputs answered", registry=registry)
    m_abstain = Counter("bastion_abstentions", "Inputs the guard abstained on", registry=registry)
    m_flags = Counter("bastion_flags", "Inputs flagged, by reason", ["reason"], registry=registry)
    m_latency = Histogram(
        "bastion_request_latency_seconds",
        "Latency of /v1/predict",
        buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
        registry=registry,
    )
    m_drift_stat = Gauge("bastion_drift_statistic", "Statistic of the last drift window", registry=registry)
    m_drift_p = Gauge("bastion_drift_p_value", "p-value of the last drift window", registry=registry)
    m_drift_alarms = Counter("bastion_drift_alarms", "Windows in which drift was detected", registry=registry)
    m_clients_flagged = Gauge("bastion_clients_flagged", "Clients flagged as extracting the model", registry=registry)
    m_spooled = Gauge("bastion_audit_spooled", "Audit records waiting in the local spool", registry=registry)
    m_spooled.set_function(audit.spooled)
    m_drift_dropped = Gauge(
        "bastion_drift_dropped_inputs", "Inputs left out of drift windows under overload", registry=registry
    )
    m_drift_dropped.set_function(lambda: float(guard.drift_dropped))
    m_store_up = Gauge("bastion_audit_store_up", "1 when the audit database is reachable", registry=registry)
    m_store_up.set_function(lambda: 1.0 if audit.db_ok else 0.0)

    def on_drift(window: dict[str, Any]) -> None:  # called from the guard's drift thread
        m_drift_stat.set(window["statistic"])
        m_drift_p.set(window["p_value"])
        if window["drift"]:
            m_drift_alarms.inc()
            events.add("drift", window)

    guard.on_drift.append(on_drift)

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        inputs: list[Any] = Field(
            ...,
            min_length=1,
            description="One input, or a batch of inputs, as nested lists in the model's input shape.",
        )

    class Result(BaseModel):
        label: int | None
        probabilities: list[float]
        abstain: bool
        reasons: list[str]
        scores: dict[str, float]
        action: str

    class PredictResponse(BaseModel):
        request_id: str
        results: list[Result]
        client: dict[str, Any]

    class Error(BaseModel):
        detail: str

    errors = {
        401: {"model": Error},
        403: {"model": Error},
        413: {"model": Error},
        422: {"model": Error},
        429: {"model": Error},
        503: {"model": Error},
    }

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> Any:
        guard.start()
        try:
            yield
        finally:
            guard.stop()
            audit.close()

    app = FastAPI(
        title=title,
        version="1",
        lifespan=lifespan,
        description="bastion's guard service: predictions with abstention, out-of-distribution and "
        "extraction signals, drift monitoring and an audit log.",
    )

    class ApiError(Exception):
        def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
            self.status, self.detail, self.headers = status, detail, headers or {}

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        m_requests.labels(request.url.path, str(exc.status)).inc()
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors()[:5]:
            loc = ".".join(str(v) for v in e.get("loc", ()) if v != "body") or "body"
            parts.append(f"{loc}: {e.get('msg', 'invalid')}")
        m_requests.labels(request.url.path, "422").inc()
        return JSONResponse({"detail": "invalid request: " + "; ".join(parts)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:  # a bug: say so, reveal nothing
        import logging

        logging.getLogger("bastion.serve").exception("internal error on %s", request.url.path)
        return JSONResponse({"detail": "internal error; the server log has the details"}, status_code=500)

    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)

    def _key(request: Request) -> KeyInfo:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not header or scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401,
                "missing API key: send 'Authorization: Bearer <key>' (bastion keys create)",
                {"WWW-Authenticate": "Bearer"},
            )
        try:
            info = keyring.verify(token.strip())
        except KeyStoreUnavailable:
            raise ApiError(503, "the key store is unavailable; try again shortly", {"Retry-After": "5"}) from None
        if info is None:
            raise ApiError(401, "invalid or revoked API key", {"WWW-Authenticate": "Bearer"})
        return info

    async def client_key(request: Request) -> KeyInfo:
        info = _key(request)
        rate, burst = limits.rate, float(limits.burst)
        st = guard.client_status(info.id)
        throttled = (st.get("flagged") and cfg.extraction.action == "throttle") or st.get("over_budget")
        if throttled:
            rate, burst = limits.throttled_rate, 1.0
        wait = buckets.take(info.id, rate, burst)
        if wait > 0:
            raise ApiError(
                429,
                f"rate limit of {rate:g} requests/s exceeded" + (" (throttled)" if throttled else ""),
                {"Retry-After": str(max(1, math.ceil(wait)))},
            )
        return info

    async def admin_key(request: Request) -> KeyInfo:
        info = _key(request)
        if info.role != "admin":
            raise ApiError(403, "this endpoint needs an admin key")
        return info

    def parse_inputs(raw: list[Any]) -> torch.Tensor:
        shape = guard.input_shape
        try:
            arr = np.asarray(raw, dtype=np.float32)
        except (ValueError, TypeError):
            dims = ", ".join(map(str, shape))
            raise ApiError(
                422,
                f"inputs must be numbers in nested lists of shape {list(shape)} (one input) or "
                f"[n, {dims}] (a batch); got ragged or non-numeric lists",
            ) from None
        if arr.shape == shape:
            arr = arr[None]
        if arr.shape[1:] != shape:
            raise ApiError(
                422,
                f"input shape {list(arr.shape)} does not match the model's {list(shape)} "
                f"(or [n, {', '.join(map(str, shape))}] for a batch)",
            )
        if arr.shape[0] > limits.max_batch:
            raise ApiError(413, f"batch of {arr.shape[0]} inputs exceeds the limit of {limits.max_batch}")
        if not np.isfinite(arr).all():
            raise ApiError(422, "inputs contain NaN or infinite values")
        lo, hi = guard.bounds
        if arr.min() < lo - 1e-6 or arr.max() > hi + 1e-6:
            raise ApiError(
                422, f"input values must lie in [{lo:g}, {hi:g}] (got {float(arr.min()):g} to {float(arr.max()):g})"
            )
        return torch.from_numpy(np.ascontiguousarray(arr))

    @app.post("/v1/predict", response_model=PredictResponse, responses=errors, tags=["predict"])
    async def predict(body: PredictRequest, key: KeyInfo = Depends(client_key)) -> Any:
        t0 = time.perf_counter()
        st = guard.client_status(key.id)
        if st.get("flagged") and cfg.extraction.action == "block":
            raise ApiError(403, "this key is blocked: its query pattern was flagged as model extraction")
        x = parse_inputs(body.inputs)
        results, status = await asyncio.wrap_future(guard.submit(x, key.id))
        if (
            status.get("flagged")
            and status.get("flagged_at") is not None
            and status["queries"] - x.shape[0] < status["flagged_at"] <= status["queries"]
        ):
            m_clients_flagged.inc()
            await asyncio.to_thread(events.add, "extraction", {"key_id": key.id, **status})
        request_id = uuid.uuid4().hex
        latency = time.perf_counter() - t0
        flagged, action = bool(status.get("flagged")), cfg.extraction.action
        if flagged and action == "block":
            client_status = "blocked"
        elif (flagged and action == "throttle") or status.get("over_budget"):
            client_status = "throttled"
        else:
            client_status = "flagged" if flagged else "ok"
        record = {
            "request_id": request_id,
            "ts": time.time(),
            "key_id": key.id,
            "input_sha256": hashlib.sha256(x.numpy().tobytes()).hexdigest(),
            "n_inputs": int(x.shape[0]),
            "labels": _dumps([r["label"] for r in results]),
            "abstain": _dumps([r["abstain"] for r in results]),
            "actions": _dumps([r["action"] for r in results]),
            "reasons": _dumps([r["reasons"] for r in results]),
            "scores": _dumps([r["scores"] for r in results]),
            "latency_ms": round(latency * 1000, 3),
            "client_status": client_status,
        }
        try:
            await asyncio.wrap_future(audit.submit(record))
        except RuntimeError:
            raise ApiError(503, "the audit log cannot be written; try again later", {"Retry-After": "5"}) from None
        n_abs = sum(r["abstain"] for r in results)
        n_flag = sum(bool(r["reasons"]) for r in results)
        for r in results:
            for reason in r["reasons"]:
                m_flags.labels(reason).inc()
        m_inputs.inc(len(results))
        m_abstain.inc(n_abs)
        series.add(1, len(results), n_abs, n_flag)
        m_requests.labels("/v1/predict", "200").inc()
        m_latency.observe(time.perf_counter() - t0)
        # built here rather than validated again against PredictResponse (which still documents it in the spec)
        return JSONResponse(
            {
                "request_id": request_id,
                "results": results,
                "client": {"queries": status.get("queries"), "status": client_status},
            }
        )

    @app.get("/health", tags=["operations"])
    async def health() -> dict[str, Any]:
        return {"status": "ok", "audit_store": "up" if audit.db_ok else "down (spooling)", "spooled": audit.spooled()}

    @app.get("/metrics", response_class=PlainTextResponse, responses=errors, tags=["operations"])
    async def metrics(key: KeyInfo = Depends(admin_key)) -> Any:
        return PlainTextResponse(generate_latest(registry).decode(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/admin/config", responses=errors, tags=["admin"])
    async def admin_config(key: KeyInfo = Depends(admin_key)) -> dict[str, Any]:
        return guard.describe()

    @app.get("/v1/admin/risk-coverage", responses=errors, tags=["admin"])
    async def admin_risk_coverage(key: KeyInfo = Depends(admin_key)) -> dict[str, Any]:
        return guard.risk_coverage.to_dict()

    @app.get("/v1/admin/clients", responses=errors, tags=["admin"])
    async def admin_clients(key: KeyInfo = Depends(admin_key)) -> dict[str, Any]:
        return {"clients": guard.clients()}

    @app.get("/v1/admin/events", responses=errors, tags=["admin"])
    async def admin_events(
        kind: str | None = None, limit: int = 100, key: KeyInfo = Depends(admin_key)
    ) -> dict[str, Any]:
        if not 1 <= limit <= 1000:
            raise ApiError(422, "limit must lie in [1, 1000]")
        try:
            return {"events": await asyncio.to_thread(store.list_events, kind, limit)}
        except Exception:  # noqa: BLE001 - the database is down
            raise ApiError(503, "the event store is unavailable; try again shortly", {"Retry-After": "5"}) from None

    @app.get("/v1/admin/drift", responses=errors, tags=["admin"])
    async def admin_drift(key: KeyInfo = Depends(admin_key)) -> dict[str, Any]:
        return {"test": guard.drift_test, "windows": guard.drift_history(), "pending": guard.drift_pending()}

    @app.get("/dashboard", response_class=HTMLResponse, responses=errors, tags=["admin"])
    async def dashboard(key: KeyInfo = Depends(admin_key)) -> Any:
        html = render_dashboard(
            series=series.rows(),
            drift=guard.drift_history(),
            drift_test=guard.drift_test,
            ood=guard.ood_histogram(),
            clients=guard.clients(),
            calibration=guard.calibration,
            audit=dict(audit.stats),
            spooled=audit.spooled(),
            store_up=audit.db_ok,
        )
        return HTMLResponse(html)

    app.state.guard = guard
    app.state.store = store
    app.state.audit = audit
    return app


def _dumps(v: Any) -> str:
    import json

    return json.dumps(v, separators=(",", ":"))
