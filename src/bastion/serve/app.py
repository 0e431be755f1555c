"""The guard service: FastAPI on uvicorn, in front of one model.

Endpoints (OpenAPI at ``/openapi.json``, with the ``bearer`` security scheme and each protected operation's
requirement; docs at ``/docs``):

- ``POST /v1/predict`` (client or admin key): ``{"inputs": [...]}`` — one input or a batch, nested lists
  in the model's input shape — answered with ``{"results": [...], "request_id": ..., "client": {...}}``.
- ``GET /v1/encrypted/spec`` (client or admin key) and ``POST /v1/predict-encrypted`` (client or admin key), with
  ``bastion serve --encrypted`` only: private inference on CKKS ciphertexts (:mod:`.routes.encrypted`).
- ``GET /health`` (no key): liveness, whether the audit store is reachable, and which signals are on.
- ``GET /metrics`` (admin): Prometheus text format.
- ``GET /dashboard`` (admin): an HTML page of traffic, abstentions, flags, drift, detector scores and
  flagged clients (server-rendered SVG, no script, no external resource).
- ``GET /v1/admin/config``, ``/v1/admin/risk-coverage``, ``/v1/admin/clients``, ``/v1/admin/events``,
  ``/v1/admin/drift`` (admin): the guard's settings and calibration, the risk-coverage curve the confidence
  threshold was chosen from, per-client extraction status, events and drift windows.

Client mistakes get 4xx with a message (401 no or bad key, 403 wrong role or blocked client, 413 body
too large, 422 malformed input, 429 over the rate with ``Retry-After``); responses never carry stack
traces. A request is answered only after its audit record is durable (database, or the local spool
while the database is down); 503 only when neither can be written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..errors import UsageError

__all__ = ["create_app"]

_DESCRIPTION = (
    "bastion's guard service: predictions with abstention, out-of-distribution and extraction signals, drift "
    "monitoring and an audit log."
)


def create_app(
    guard: Any,
    store: Any,
    *,
    spool: str,
    title: str = "bastion guard",
    clock: Callable[[], float] = time.monotonic,
    he: Any = None,
) -> Any:
    """The FastAPI application around a calibrated :class:`~bastion.serve.guard.Guard` and a
    :class:`~bastion.serve.store.Store`; ``clock`` (monotonic seconds) times the key cache and the rate limits.
    ``he``: the encrypted evaluator (:class:`~bastion.defenses.encrypted.isolation.IsolatedHEServer`) behind the
    encrypted endpoints, None for none (the app closes it when it shuts down).

    Raises:
        UsageError: the ``service`` extra (FastAPI, prometheus-client) is not installed.
    """
    try:
        from fastapi import FastAPI

        from .auth import Auth
        from .http_errors import install_error_handlers
        from .plumbing import BodyLimit
        from .routes import admin, encrypted, ops, predict
        from .service import Service
    except ImportError as exc:  # pragma: no cover - the service extra is missing
        raise UsageError(
            f"bastion serve needs the service extra ({exc.name} is missing): pip install 'bastion[service]'"
        ) from None

    svc = Service.build(guard, store, spool=spool, clock=clock, he=he)
    auth = Auth(svc)
    app = FastAPI(title=title, version="1", lifespan=svc.lifespan, description=_DESCRIPTION)
    install_error_handlers(app, svc.telemetry.count)
    limits = guard.config.limits
    app.add_middleware(
        BodyLimit, max_bytes=limits.max_body_bytes, paths={encrypted.PREDICT_PATH: limits.max_encrypted_body_bytes}
    )
    for module in (predict, ops, admin) + ((encrypted,) if he is not None else ()):
        app.include_router(module.router(svc, auth))
    app.state.service = svc
    app.state.guard, app.state.store, app.state.audit = guard, store, svc.audit
    return app
