"""The admin API (an admin key): ``GET /v1/admin/config``, ``/risk-coverage``, ``/clients``, ``/events``,
``/drift`` and the ``/dashboard`` page.

No postponed annotations here: FastAPI reads the endpoints' signatures at run time.
"""

import asyncio
from typing import Any

from fastapi import APIRouter, Security
from fastapi.responses import HTMLResponse

from ..auth import Auth
from ..dashboard import render_dashboard
from ..http_errors import ERRORS, ApiError
from ..service import Service

__all__ = ["router"]


def router(svc: Service, auth: Auth) -> APIRouter:
    api = APIRouter(tags=["admin"], responses=ERRORS, dependencies=[Security(auth.admin)])
    guard = svc.guard

    @api.get("/v1/admin/config")
    async def admin_config() -> dict[str, Any]:
        """The guard's settings, calibration and signals."""
        return guard.describe()

    @api.get("/v1/admin/risk-coverage")
    async def admin_risk_coverage() -> dict[str, Any]:
        """The risk-coverage curve the confidence threshold was chosen from."""
        return guard.risk_coverage.to_dict()

    @api.get("/v1/admin/clients")
    async def admin_clients() -> dict[str, Any]:
        """Each key's extraction status."""
        return {"clients": guard.clients()}

    @api.get("/v1/admin/events")
    async def admin_events(kind: str | None = None, limit: int = 100) -> dict[str, Any]:
        """Drift and extraction events, newest first."""
        if not 1 <= limit <= 1000:
            raise ApiError(422, "limit must lie in [1, 1000]")
        try:
            return {"events": await asyncio.to_thread(svc.store.list_events, kind, limit)}
        except Exception:  # noqa: BLE001 - the database is down
            raise ApiError(503, "the event store is unavailable; try again shortly", {"Retry-After": "5"}) from None

    @api.get("/v1/admin/drift")
    async def admin_drift() -> dict[str, Any]:
        """The drift test, its completed windows and the feature batches waiting for it."""
        return {"test": guard.drift_test, "windows": guard.drift_history(), "pending": guard.drift_pending()}

    @api.get("/dashboard", response_class=HTMLResponse)
    async def dashboard() -> Any:
        """Traffic, abstentions, flags, drift, detector scores and flagged clients (server-rendered SVG)."""
        audit = svc.audit
        html = render_dashboard(
            series=svc.series.rows(),
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

    return api
