"""What the guard does with an input and with a client, each decided in one pure function.

:func:`decide` turns one input's signal readings (confidence, ood, backdoor: a score, whether it fired, the
signal's ``action``) into its answer: a signal that fires with ``abstain`` withholds the label, one with
``flag`` or ``abstain`` names its reason, one with ``answer`` only reports its score.

The extraction policy is applied by the HTTP layer.

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

from .config import Action, ExtractionConfig, LimitsConfig

__all__ = ["ClientPolicy", "Reading", "client_policy", "decide"]

Status = Literal["ok", "flagged", "throttled", "blocked"]


@dataclass(frozen=True)
class Reading:
    """One signal's reading of one input: its ``score`` under ``key`` in the answer, the ``reason`` named when it
    fired (``None``: it did not) and the signal's ``action``."""

    key: str
    score: float
    reason: str | None
    action: Action


def decide(label: int, probabilities: list[float] | None, readings: list[Reading]) -> dict[str, Any]:
    """One input's answer: label (``None`` when a fired signal abstains), probabilities (left out when ``None``: a
    label-only output policy), the reasons of the fired signals whose action is not ``answer``, every score, and the
    action taken (``abstain``, ``flag``, ``answer``)."""
    fired = [r for r in readings if r.reason is not None]
    abstain = any(r.action == "abstain" for r in fired)
    reasons = [str(r.reason) for r in fired if r.action != "answer"]
    return {
        "label": None if abstain else label,
        **({} if probabilities is None else {"probabilities": probabilities}),
        "abstain": abstain,
        "reasons": reasons,
        "scores": {r.key: r.score for r in readings},
        "action": "abstain" if abstain else ("flag" if reasons else "answer"),
    }


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
