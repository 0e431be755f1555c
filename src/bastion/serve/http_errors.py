"""The service's error contract: every 4xx/5xx is ``{"detail": "<one line>"}`` (documented in the OpenAPI spec
as :class:`Error`), never a stack trace; a bug answers 500 and logs the traceback on the server."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = ["ERRORS", "ApiError", "Error", "install_error_handlers"]


class Error(BaseModel):
    detail: str


# the error responses every protected operation documents
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": Error} for code in (401, 403, 413, 422, 429, 503)}


class ApiError(Exception):
    """An answer other than 200: ``status``, a one-line ``detail`` and extra ``headers`` (Retry-After,
    WWW-Authenticate)."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


def install_error_handlers(app: FastAPI, count: Any) -> None:
    """JSON error answers on ``app``; ``count(path, status)`` is called for each :class:`ApiError` and 422."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        count(request.url.path, exc.status)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors()[:5]:
            loc = ".".join(str(v) for v in e.get("loc", ()) if v != "body") or "body"
            parts.append(f"{loc}: {e.get('msg', 'invalid')}")
        count(request.url.path, 422)
        return JSONResponse({"detail": "invalid request: " + "; ".join(parts)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:  # a bug: say so, reveal nothing
        logging.getLogger("bastion.serve").exception("internal error on %s", request.url.path)
        return JSONResponse({"detail": "internal error; the server log has the details"}, status_code=500)
