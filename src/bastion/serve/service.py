"""The running service's parts, built once and handed to each router: the guard, the store, the audit log, the
key ring, the rate limiter, the event writer, the dashboard's series, the metrics and, with ``bastion serve
--encrypted``, the encrypted evaluator (an :class:`~bastion.defenses.encrypted.isolation.IsolatedHEServer`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from .auditlog import AuditLog
from .keys import KeyRing
from .plumbing import Events, Series, TokenBucket
from .telemetry import Telemetry

__all__ = ["Service"]


@dataclass
class Service:
    guard: Any
    store: Any
    audit: AuditLog
    keyring: KeyRing
    buckets: TokenBucket
    events: Events
    series: Series
    telemetry: Telemetry
    he: Any = None

    @classmethod
    def build(
        cls, guard: Any, store: Any, *, spool: str, clock: Callable[[], float] = time.monotonic, he: Any = None
    ) -> Service:
        """The parts around ``guard`` and ``store`` (and ``he``, the encrypted evaluator, or None); ``clock``
        (monotonic seconds) times the key cache and the token buckets. Drift windows update the metrics and write
        an event when they drift."""
        audit = AuditLog(store, spool)
        svc = cls(
            guard=guard,
            store=store,
            audit=audit,
            keyring=KeyRing(store, clock=clock),
            buckets=TokenBucket(clock),
            events=Events(store),
            series=Series(),
            telemetry=Telemetry(guard, audit),
            he=he,
        )
        guard.on_drift.append(svc._on_drift)
        return svc

    def _on_drift(self, window: dict[str, Any]) -> None:  # called from the guard's drift thread
        self.telemetry.drift_window(window)
        if window["drift"]:
            self.events.add("drift", window)

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Any) -> AsyncIterator[None]:
        """Start the guard's workers with the server; stop them, flush the audit log and stop the encrypted
        evaluator's process when it shuts down."""
        self.guard.start()
        try:
            yield
        finally:
            self.guard.stop()
            self.audit.close()
            if self.he is not None:
                self.he.close()
