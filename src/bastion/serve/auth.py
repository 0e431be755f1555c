"""API keys on requests, through FastAPI's HTTP bearer security scheme (so ``/openapi.json`` declares the scheme
and each protected operation's security requirement), and the client policy applied to each predict request.

``auto_error=False``: a missing or non-bearer ``Authorization`` header reaches our own 401, with
``WWW-Authenticate: Bearer`` and a message that says how to get a key. No postponed annotations here: FastAPI
reads these dependencies' signatures at run time.
"""

import math

from fastapi import Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .http_errors import ApiError
from .keys import KeyInfo, KeyStoreUnavailable
from .service import Service

__all__ = ["Auth"]

_MISSING = "missing API key: send 'Authorization: Bearer <key>' (bastion keys create)"


class Auth:
    """The dependencies of the protected endpoints: :attr:`client` (any valid key, with the client policy
    applied: a blocked key gets 403, a key over its rate 429 with ``Retry-After``) and :attr:`admin` (an admin key,
    else 403)."""

    def __init__(self, svc: Service) -> None:
        self.scheme = HTTPBearer(
            auto_error=False,
            scheme_name="bearer",
            bearerFormat="bst_<id>_<secret>",
            description="An API key from `bastion keys create --role client|admin`.",
        )
        scheme = self.scheme

        async def key(cred: HTTPAuthorizationCredentials | None = Security(scheme)) -> KeyInfo:
            token = cred.credentials.strip() if cred is not None else ""
            if not token:
                raise ApiError(401, _MISSING, {"WWW-Authenticate": "Bearer"})
            try:
                info = svc.keyring.verify(token)
            except KeyStoreUnavailable:
                raise ApiError(503, "the key store is unavailable; try again shortly", {"Retry-After": "5"}) from None
            if info is None:
                raise ApiError(401, "invalid or revoked API key", {"WWW-Authenticate": "Bearer"})
            return info

        async def client(info: KeyInfo = Security(key)) -> KeyInfo:
            policy = svc.guard.client_policy(info.id)
            if policy.blocked:
                raise ApiError(403, "this key is blocked: its query pattern was flagged as model extraction")
            wait = svc.buckets.take(info.id, policy.rate, policy.burst)
            if wait > 0:
                raise ApiError(
                    429,
                    f"rate limit of {policy.rate:g} requests/s exceeded" + (" (throttled)" if policy.throttled else ""),
                    {"Retry-After": str(max(1, math.ceil(wait)))},
                )
            return info

        async def admin(info: KeyInfo = Security(key)) -> KeyInfo:
            if info.role != "admin":
                raise ApiError(403, "this endpoint needs an admin key")
            return info

        self.key, self.client, self.admin = key, client, admin
