"""The service's HTTP endpoints, one :class:`fastapi.APIRouter` per concern, each built from the running
:class:`~bastion.serve.service.Service` and its :class:`~bastion.serve.auth.Auth`:

- :mod:`.predict` — ``POST /v1/predict`` (input parsing, the audit record, the answer);
- :mod:`.ops` — ``GET /health`` (no key) and ``GET /metrics`` (admin);
- :mod:`.admin` — ``GET /v1/admin/*`` and ``GET /dashboard`` (admin);
- :mod:`.encrypted` — ``GET /v1/encrypted/spec`` and ``POST /v1/predict-encrypted`` (``bastion serve --encrypted``).

Handlers apply the guard's decisions; none of them decides one (the client policy is
:meth:`Guard.client_policy <bastion.serve.guard.Guard.client_policy>`, applied by :class:`~bastion.serve.auth.Auth`).
"""

from __future__ import annotations

__all__ = ["admin", "encrypted", "ops", "predict"]
