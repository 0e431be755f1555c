"""The service's Prometheus metrics (``/metrics``), in a registry of its own."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Telemetry"]

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)


class Telemetry:
    """Counters of requests, inputs, abstentions and flags, the latency histogram, the drift gauges and the gauges
    read at scrape time from the guard (dropped drift inputs) and the audit log (spool, store up)."""

    def __init__(self, guard: Any, audit: Any) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "bastion_requests", "Requests answered, by endpoint and status code", ["endpoint", "status"], registry=r
        )
        self.inputs = Counter("bastion_inputs", "Inputs answered", registry=r)
        self.abstentions = Counter("bastion_abstentions", "Inputs the guard abstained on", registry=r)
        self.flags = Counter("bastion_flags", "Inputs flagged, by reason", ["reason"], registry=r)
        self.latency = Histogram(
            "bastion_request_latency_seconds", "Latency of /v1/predict", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.drift_statistic = Gauge("bastion_drift_statistic", "Statistic of the last drift window", registry=r)
        self.drift_p = Gauge("bastion_drift_p_value", "p-value of the last drift window", registry=r)
        self.drift_alarms = Counter("bastion_drift_alarms", "Windows in which drift was detected", registry=r)
        self.clients_flagged = Gauge("bastion_clients_flagged", "Clients flagged as extracting the model", registry=r)
        Gauge("bastion_audit_spooled", "Audit records waiting in the local spool", registry=r).set_function(
            audit.spooled
        )
        Gauge(
            "bastion_drift_dropped_inputs", "Inputs left out of drift windows under overload", registry=r
        ).set_function(lambda: float(guard.drift_dropped))
        Gauge("bastion_audit_store_up", "1 when the audit database is reachable", registry=r).set_function(
            lambda: 1.0 if audit.db_ok else 0.0
        )

    def count(self, endpoint: str, status: int) -> None:
        self.requests.labels(endpoint, str(status)).inc()

    def answered(self, results: list[dict[str, Any]], seconds: float) -> None:
        """One answered /v1/predict request: its inputs, abstentions, flags by reason and latency."""
        for r in results:
            for reason in r["reasons"]:
                self.flags.labels(reason).inc()
        self.inputs.inc(len(results))
        self.abstentions.inc(sum(r["abstain"] for r in results))
        self.count("/v1/predict", 200)
        self.latency.observe(seconds)

    def answered_encrypted(self, n_inputs: int) -> None:
        """One answered /v1/predict-encrypted request of ``n_inputs`` samples (nothing else is known about them)."""
        self.inputs.inc(n_inputs)
        self.count("/v1/predict-encrypted", 200)

    def drift_window(self, window: dict[str, Any]) -> None:
        self.drift_statistic.set(window["statistic"])
        self.drift_p.set(window["p_value"])
        if window["drift"]:
            self.drift_alarms.inc()

    def text(self) -> str:
        return generate_latest(self.registry).decode()
