"""The values an audit produces: probe results, validity checks, plots, examples — and the report.

Everything here is plain data that round-trips through JSON (``to_dict`` / ``from_dict``): the runner
saves each finished probe as JSON (that is how an interrupted audit resumes), ``report.json`` is the
list of them plus the settings and fingerprints, and the HTML and JUnit writers read only that dict.

Report schema (``SCHEMA``), top level::

    schema, bastion_version, created (ISO 8601, UTC), resumed (bool),
    seconds (the whole audit: a resumed one adds the finished probes' recorded seconds), seconds_this_run
    settings:    {model, data, profile, norm, eps: [..], seed, n, probes: [names]}
    model:       {spec, fingerprint, kind, white_box, output, input_shape, n_classes, bounds}
    data:        {spec, fingerprint, n_test, input_shape, n_classes, kind: 'image' | 'tabular' | 'other'}
    environment: {python, torch, platform, threads}
    probes:      [ProbeResult.to_dict()]            in run order
    checks:      [Check.to_dict()]                  every probe's checks, gathered
    metrics:     {name: value}                      headline metrics the gates read (see gates.py)
    gates:       [{expression, metric, op, threshold, value, passed}]
    verdict:     {risk: 'high'|'medium'|'low'|'n/a', validity: 'pass'|'warn'|'fail', gates: 'pass'|'fail'|'none'}
    scale:       {backend: 'serial'|'ray', workers, [address, threads_per_worker,]
                  maps: [{label, shards, workers, seconds, shard_seconds: [..], resumed}]}   (bastion.scale)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import numpy as np
import torch

__all__ = ["RISK_ORDER", "SCHEMA", "STATUS_ORDER", "Check", "Example", "Plot", "ProbeResult", "Series", "jsonable"]

SCHEMA = "bastion.audit/1"

CheckStatus = Literal["pass", "warn", "fail", "skipped"]
Risk = Literal["high", "medium", "low", "n/a"]
ProbeStatus = Literal["ok", "skipped", "error"]

RISK_ORDER = {"n/a": 0, "low": 1, "medium": 2, "high": 3}
STATUS_ORDER = {"skipped": 0, "pass": 1, "warn": 2, "fail": 3}


def jsonable(v: Any) -> Any:
    """Plain JSON values: tensors and numpy arrays to lists, non-finite floats to None, tuples to lists."""
    if isinstance(v, torch.Tensor):
        return jsonable(v.detach().cpu().tolist())
    if isinstance(v, (np.ndarray, np.generic)):
        return jsonable(v.tolist())
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, (str, int, bool)) or v is None:
        return v
    return repr(v)


@dataclass
class Check:
    """One evaluation-validity check (Carlini et al. 2019; AutoAttack's flags).

    ``status``: 'pass', 'warn' or 'fail' ('skipped' when it could not run, with the reason in
    ``explanation``). ``explanation`` says what was measured and what a warning means;
    ``evidence`` holds the numbers it was decided on.
    """

    id: str
    title: str
    status: CheckStatus
    explanation: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return jsonable(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Check:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass
class Series:
    """One line (x, y) of a line plot, or the raw values ``x`` of a histogram (``y`` empty)."""

    name: str
    x: list[float]
    y: list[float] = field(default_factory=list)


@dataclass
class Plot:
    """A plot the HTML report draws: ``kind`` 'line' (robustness / query-success curves), 'hist'
    (distributions; each series' ``x`` are the raw values) or 'bar' (``x`` category positions 0..k-1,
    labels in ``categories``)."""

    id: str
    title: str
    kind: Literal["line", "hist", "bar"]
    x_label: str
    y_label: str
    series: list[Series]
    categories: list[str] = field(default_factory=list)
    x_log: bool = False

    def to_dict(self) -> dict[str, Any]:
        return jsonable(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plot:
        d = dict(d)
        d["series"] = [Series(**s) for s in d.get("series", [])]
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass
class Example:
    """A clean input and its adversarial counterpart, for the report's gallery.

    ``clean`` and ``adversarial`` are nested lists in the model's input shape (C, H, W) for images or
    (F,) for tabular records; ``bounds`` the model's input bounds (for rendering)."""

    index: int
    label: int
    pred_clean: int
    pred_adv: int
    attack: str
    norm: str
    eps: float | None
    perturbation: float
    clean: list[Any]
    adversarial: list[Any]
    bounds: tuple[float, float] = (0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        return jsonable(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Example:
        d = dict(d)
        d["bounds"] = tuple(d.get("bounds", (0.0, 1.0)))
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass
class ProbeResult:
    """What one probe measured.

    Attributes:
        probe: registry name ('whitebox', ...); ``title``: human name; ``threat``: e.g.
            'evasion / white-box'.
        status: 'ok', 'skipped' (``reason`` says why) or 'error' (``reason`` holds the message).
        risk: what the result means for the model: 'high', 'medium', 'low' or 'n/a' (the rule is in
            ``summary``'s probe docstring).
        summary: one sentence with the headline number(s).
        params: every parameter the probe ran with (attacks as their ``repr``).
        metrics: flat scalar results, e.g. ``{"robust_accuracy@eps=0.1": 0.61}``.
        plots, checks, examples: see :class:`Plot`, :class:`Check`, :class:`Example`.
        per_sample: ``{run name: {field: [one value per audited input]}}``.
        artifacts: other results worth keeping that are not per input (e.g. a trained patch's pixels).
        seconds: wall time; ``seed``: the seed the probe's randomness came from.
    """

    probe: str
    title: str
    threat: str
    status: ProbeStatus = "ok"
    risk: Risk = "n/a"
    summary: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float | None] = field(default_factory=dict)
    plots: list[Plot] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)
    per_sample: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    seed: int = 0
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["plots"] = [p.to_dict() for p in self.plots]
        d["checks"] = [c.to_dict() for c in self.checks]
        d["examples"] = [e.to_dict() for e in self.examples]
        return jsonable(d)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProbeResult:
        d = dict(d)
        d["plots"] = [Plot.from_dict(p) for p in d.get("plots", [])]
        d["checks"] = [Check.from_dict(c) for c in d.get("checks", [])]
        d["examples"] = [Example.from_dict(e) for e in d.get("examples", [])]
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})
