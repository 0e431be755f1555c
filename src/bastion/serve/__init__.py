"""``bastion serve``: a guard service in front of a model — abstain when unsure, flag out-of-distribution
inputs, watch the input distribution drift, notice clients extracting the model, rate-limit, and write
every decision to an audit log that loses nothing.

- :class:`~bastion.serve.guard.Guard` — model + signals + policies, calibrated on reference data;
  :mod:`~bastion.serve.policy` — what a flagged client gets; :mod:`~bastion.serve.config` — ``guard.toml``.
- :func:`~bastion.serve.app.create_app` / :func:`~bastion.serve.server.build_app` — the FastAPI app: a
  :class:`~bastion.serve.service.Service` of the running parts, :class:`~bastion.serve.auth.Auth` (bearer keys)
  and the routers of :mod:`bastion.serve.routes` (predict, ops, admin).
- :class:`~bastion.serve.store.Store` — SQLAlchemy (SQLite, PostgreSQL) with migrations;
  :class:`~bastion.serve.auditlog.AuditLog` — group-committed audit records with a durable spool.
- :mod:`~bastion.serve.keys` — API keys as salted hashes; :mod:`~bastion.serve.drift`,
  :mod:`~bastion.serve.extraction` — the stream monitors.

Needs the ``service`` extra (FastAPI, uvicorn, SQLAlchemy, prometheus-client; psycopg for PostgreSQL).
"""

from __future__ import annotations

__all__ = ["auditlog", "config", "guard", "keys", "policy", "risk", "server", "store"]
