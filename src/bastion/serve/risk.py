"""Selective classification's calibration (Geifman & El-Yaniv 2017, "Selective Classification for Deep Neural
Networks", NeurIPS): the risk-coverage curve of the maximum softmax probability on held-out data, and the
threshold chosen from it as the lowest confidence whose answered set keeps the empirical risk at or below a
target. Pure functions of (N,) tensors; the guard keeps the result and serves it at /v1/admin/risk-coverage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import UsageError

__all__ = ["RiskCoverage", "risk_coverage"]


@dataclass
class RiskCoverage:
    """A risk-coverage curve and the threshold chosen from it."""

    thresholds: list[float]
    coverage: list[float]
    risk: list[float]
    target_risk: float
    threshold: float
    chosen_coverage: float
    chosen_risk: float

    def to_dict(self, points: int = 200) -> dict[str, Any]:
        step = max(1, len(self.coverage) // points)
        return {
            "target_risk": self.target_risk,
            "threshold": self.threshold,
            "coverage_at_threshold": self.chosen_coverage,
            "risk_at_threshold": self.chosen_risk,
            "thresholds": self.thresholds[::step],
            "coverage": self.coverage[::step],
            "risk": self.risk[::step],
        }


def risk_coverage(confidence: Tensor, correct: Tensor, target_risk: float) -> RiskCoverage:
    """Sort by confidence, descending; answering the k most confident inputs has coverage k/n and risk
    (errors among them)/k. The threshold is the confidence of the largest k whose risk is at most
    ``target_risk`` — every input at least that confident is answered. Ties are answered together."""
    conf = confidence.double().flatten()
    ok = correct.bool().flatten()
    if conf.numel() == 0:
        raise UsageError("risk-coverage calibration needs at least one reference input")
    order = torch.argsort(conf, descending=True)
    c, e = conf[order], (~ok[order]).double()
    k = torch.arange(1, c.numel() + 1, dtype=torch.float64)
    risk = torch.cumsum(e, 0) / k
    # answer ties together: only cut where the next confidence is strictly lower
    cut = torch.ones_like(c, dtype=torch.bool)
    cut[:-1] = c[:-1] > c[1:]
    feasible = (risk <= target_risk) & cut
    if bool(feasible.any()):
        i = int(torch.nonzero(feasible).max())
        thr, cov, rsk = float(c[i]), float(k[i] / c.numel()), float(risk[i])
    else:  # not even the most confident input meets the target: answer nothing
        thr, cov, rsk = math.inf, 0.0, 0.0
    return RiskCoverage(c.tolist(), (k / c.numel()).tolist(), risk.tolist(), float(target_risk), thr, cov, rsk)
