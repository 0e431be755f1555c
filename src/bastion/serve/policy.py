"""What the guard does with a client: the extraction policy decided in one pure function, applied by the HTTP
layer.

:func:`client_policy` maps a client's extraction status (:meth:`ExtractionMonitor.status
<bastion.serve.extraction.ExtractionMonitor.status>`: ``flagged``, ``over_budget``) and the configuration to a
:class:`ClientPolicy`:

- not flagged, within budget: ``ok`` — ``limits.rate`` requests per second, ``limits.burst`` at once;
- flagged with ``extraction.action = "flag"``: ``flagged`` — the same limits, and the answer says so;
- flagged with ``"throttle"``, or over the query budget: ``throttled`` — ``limits.throttled_rate``, burst 1;
- flagged with ``"block"``: ``blocked`` — refused (403).

A blocked client is refused before it is rate-limited; an over-budget client is throttled whatever the action.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .config import ExtractionConfig, LimitsConfig

__all__ = ["ClientPolicy", "client_policy"]

Status = Literal["ok", "flagged", "throttled", "blocked"]


@dataclass(frozen=True)
class ClientPolicy:
    """How the service treats one client now: ``status``, and the token bucket (``rate`` requests per second,
    ``burst``) its requests are taken from; ``rate`` is 0 for a blocked client."""

    status: Status
    rate: float
    burst: float

    @property
    def blocked(self) -> bool:
        return self.status == "blocked"

    @property
    def throttled(self) -> bool:
        return self.status == "throttled"


def client_policy(status: Mapping[str, Any], extraction: ExtractionConfig, limits: LimitsConfig) -> ClientPolicy:
    """The policy of a client whose extraction status is ``status`` (see the module docstring's table)."""
    flagged, over_budget = bool(status.get("flagged")), bool(status.get("over_budget"))
    if flagged and extraction.action == "block":
        return ClientPolicy("blocked", 0.0, 0.0)
    if over_budget or (flagged and extraction.action == "throttle"):
        return ClientPolicy("throttled", float(limits.throttled_rate), 1.0)
    return ClientPolicy("flagged" if flagged else "ok", float(limits.rate), float(limits.burst))
