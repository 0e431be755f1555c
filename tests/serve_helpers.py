"""Run the guard service for real: uvicorn on a free loopback port in a background thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class FakeClock:
    """Monotonic seconds that move only when a test advances them: pass it as ``clock=`` (the key cache and the
    rate limits read it) and the test waits on nothing."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += float(seconds)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_drift_windows(admin_client, n: int, timeout: float = 60) -> list[dict]:
    """Poll /v1/admin/drift until ``n`` windows are done (the drift test runs in its own thread)."""
    deadline = time.monotonic() + timeout
    while True:
        windows = admin_client.get("/v1/admin/drift").json()["windows"]
        if len(windows) >= n:
            return windows
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(windows)} of {n} drift windows after {timeout} s")
        time.sleep(0.1)


@contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1:PORT; yields the base URL; shuts down (lifespan included) after."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
