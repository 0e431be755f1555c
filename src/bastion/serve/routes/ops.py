"""Operations: ``GET /health`` (no key: liveness, the audit store, and which signals this guard has) and
``GET /metrics`` (admin: Prometheus text format).

No postponed annotations here: FastAPI reads the endpoints' signatures at run time.
"""

from typing import Any

from fastapi import APIRouter, Security
from fastapi.responses import PlainTextResponse

from ..auth import Auth
from ..http_errors import ERRORS
from ..keys import KeyInfo
from ..service import Service

__all__ = ["router"]


def router(svc: Service, auth: Auth) -> APIRouter:
    api = APIRouter(tags=["operations"])
    audit, guard = svc.audit, svc.guard

    @api.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness; whether the audit database is reachable (else records wait in the spool); each signal,
        ``on...`` or ``off: why`` (a model without features has no OOD signal; STRIP's backdoor signal is off
        unless the settings turn it on); whether encrypted inference is served (``bastion serve --encrypted``)."""
        return {
            "status": "ok",
            "audit_store": "up" if audit.db_ok else "down (spooling)",
            "spooled": audit.spooled(),
            "ood_signal": guard.detector is not None,
            "backdoor_signal": guard.backdoor is not None,
            "signals": guard.signals(),
            "encrypted": svc.he is not None,
        }

    @api.get("/metrics", response_class=PlainTextResponse, responses=ERRORS)
    async def metrics(key: KeyInfo = Security(auth.admin)) -> Any:
        return PlainTextResponse(svc.telemetry.text(), media_type="text/plain; version=0.0.4")

    return api
