"""The guard's configuration: one TOML file (``--config guard.toml``), every key optional.

```toml
[confidence]            # selective classification: abstain below a confidence calibrated to a target risk
target_risk = 0.02      # error rate allowed among answered inputs (reference data)
action = "abstain"      # answer | flag | abstain
[ood]                   # an adversarial / out-of-distribution input detector
detector = "mahalanobis" # mahalanobis (penultimate features, Lee et al. 2018) | activations | squeeze
fpr = 0.05              # false-positive rate on clean reference data
action = "flag"
[drift]                 # two-sample test of each window of traffic against the reference
test = "auto"           # mmd (features) | ks (per feature, tabular) | auto
window = 200
alpha = 0.01
permutations = 500
[extraction]            # PRADA per client (Juuti et al. 2019)
delta = 0.9             # Shapiro-Wilk W below this flags the client (unset: the monitor's default)
budget = 0              # queries per client (0: no budget)
action = "block"        # flag | throttle | block
[limits]
max_batch = 64          # inputs per request
max_body_bytes = 2000000
rate = 200.0            # requests per second per key (token bucket)
burst = 400
throttled_rate = 2.0    # the rate of a client throttled by the extraction policy
```
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import UsageError

__all__ = ["GuardConfig", "load_config"]

ACTIONS = ("answer", "flag", "abstain")
CLIENT_ACTIONS = ("flag", "throttle", "block")


@dataclass
class ConfidenceConfig:
    target_risk: float = 0.02
    action: str = "abstain"


@dataclass
class OodConfig:
    detector: str = "mahalanobis"
    fpr: float = 0.05
    action: str = "flag"


@dataclass
class DriftConfig:
    test: str = "auto"
    window: int = 200
    alpha: float = 0.01
    permutations: int = 500


@dataclass
class ExtractionConfig:
    delta: float | None = None
    budget: int = 0
    action: str = "block"


@dataclass
class LimitsConfig:
    max_batch: int = 64
    max_body_bytes: int = 2_000_000
    rate: float = 200.0
    burst: int = 400
    throttled_rate: float = 2.0


@dataclass
class GuardConfig:
    confidence: ConfidenceConfig = field(default_factory=ConfidenceConfig)
    ood: OodConfig = field(default_factory=OodConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    extraction: ExtractionConfig = field(default_factory=ExtractionConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)

    def __post_init__(self) -> None:
        c, o, d, e, lim = self.confidence, self.ood, self.drift, self.extraction, self.limits
        _in(c.action, ACTIONS, "confidence.action")
        _in(o.action, ACTIONS, "ood.action")
        _in(e.action, CLIENT_ACTIONS, "extraction.action")
        _in(d.test, ("auto", "mmd", "ks"), "drift.test")
        _in(o.detector, ("mahalanobis", "activations", "squeeze"), "ood.detector")
        _prob(c.target_risk, "confidence.target_risk")
        _prob(o.fpr, "ood.fpr")
        _prob(d.alpha, "drift.alpha")
        if e.delta is not None:
            _prob(e.delta, "extraction.delta")
        for name, v, lo in (
            ("drift.window", d.window, 10),
            ("drift.permutations", d.permutations, 19),
            ("extraction.budget", e.budget, 0),
            ("limits.max_batch", lim.max_batch, 1),
            ("limits.max_body_bytes", lim.max_body_bytes, 1024),
            ("limits.burst", lim.burst, 1),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise UsageError(f"{name} must be an integer >= {lo}, got {v!r}")
        for name, v in (("limits.rate", lim.rate), ("limits.throttled_rate", lim.throttled_rate)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise UsageError(f"{name} must be a number > 0 (requests per second), got {v!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _in(v: Any, choices: tuple[str, ...], name: str) -> None:
    if v not in choices:
        raise UsageError(f"{name} must be one of {', '.join(choices)}, got {v!r}")


def _prob(v: Any, name: str) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
        raise UsageError(f"{name} must be a number strictly between 0 and 1, got {v!r}")


_SECTIONS = {
    "confidence": ConfidenceConfig,
    "ood": OodConfig,
    "drift": DriftConfig,
    "extraction": ExtractionConfig,
    "limits": LimitsConfig,
}


def load_config(path: str | Path | None = None, **overrides: dict[str, Any]) -> GuardConfig:
    """Read ``path`` (TOML; None: the defaults) and apply ``overrides`` ({section: {key: value}})."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"--config: no such file {str(p)!r}")
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"--config: {p} is not valid TOML: {exc}") from None
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values)
    kwargs = {}
    for section, values in raw.items():
        if section not in _SECTIONS:
            raise UsageError(f"--config: unknown section [{section}]: known are {', '.join(_SECTIONS)}")
        cls = _SECTIONS[section]
        if not isinstance(values, dict):
            raise UsageError(f"--config: [{section}] must be a table")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(
                f"--config: unknown key(s) {', '.join(unknown)} in [{section}]: known are {', '.join(sorted(known))}"
            )
        kwargs[section] = cls(**values)
    return GuardConfig(**kwargs)
