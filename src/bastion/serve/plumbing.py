"""The service's small parts: per-key token buckets, the dashboard's time series, the request-body limit
(pure ASGI middleware) and the event writer that survives a database outage."""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["BodyLimit", "Events", "Series", "TokenBucket"]


class TokenBucket:
    """Per-key token buckets: ``burst`` tokens, refilled at ``rate`` per second of ``clock`` (monotonic seconds;
    tests pass one they advance)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._state: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str, rate: float, burst: float) -> float:
        """0 when a token was taken, else the seconds until one is available."""
        now = self.clock()
        with self._lock:
            tokens, last = self._state.get(key, (burst, now))
            tokens = min(burst, tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._state[key] = (tokens - 1.0, now)
                return 0.0
            self._state[key] = (tokens, now)
            return (1.0 - tokens) / rate


class Series:
    """Per-10-second counters for the dashboard (the last 6 hours)."""

    def __init__(self, bucket: float = 10.0, keep: int = 2160) -> None:
        self.bucket = bucket
        self.data: deque[list[float]] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def add(self, requests: int = 0, inputs: int = 0, abstained: int = 0, flagged: int = 0) -> None:
        t = math.floor(time.time() / self.bucket) * self.bucket
        with self._lock:
            if not self.data or self.data[-1][0] != t:
                self.data.append([t, 0, 0, 0, 0])
            row = self.data[-1]
            row[1] += requests
            row[2] += inputs
            row[3] += abstained
            row[4] += flagged

    def rows(self) -> list[list[float]]:
        with self._lock:
            return [list(r) for r in self.data]


class BodyLimit:
    """Pure ASGI middleware: 413 for a request body over ``max_bytes`` — by its Content-Length, or while a
    body without one streams in. ``paths`` maps a path to a limit of its own (the encrypted endpoint's bodies
    carry ciphertexts, far larger than plain inputs)."""

    def __init__(self, app: Any, max_bytes: int, paths: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)
        self.paths = {path: int(limit) for path, limit in (paths or {}).items()}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.paths.get(scope.get("path", ""), self.max_bytes)
        length = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), None)
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                await _send_json(send, 400, {"detail": "invalid Content-Length header"})
                return
            if size > limit:
                await _send_json(
                    send, 413, {"detail": f"request body of {size} bytes exceeds the limit of {limit} bytes"}
                )
                return
            await self.app(scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # an HTTPException: FastAPI's body reader (and Request.body) re-raises it as it is
                    from starlette.exceptions import HTTPException

                    raise HTTPException(413, f"request body exceeds the limit of {limit} bytes")
            return message

        await self.app(scope, counting_receive, send)


async def _send_json(send: Any, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": data})


class Events:
    """Events (drift alarms, flagged clients) written to the store; while it is down they wait in memory (up to
    10,000) and are written with the next event that gets through."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.pending: deque[tuple[float, str, dict[str, Any]]] = deque(maxlen=10_000)
        self._lock = threading.Lock()

    def add(self, kind: str, detail: dict[str, Any]) -> None:
        with self._lock:
            self.pending.append((time.time(), kind, detail))
            try:
                while self.pending:
                    ts, k, d = self.pending[0]
                    self.store.add_event(k, d, ts=ts)
                    self.pending.popleft()
            except Exception:  # noqa: BLE001, S110 - the store is down: keep them for the next add
                pass
