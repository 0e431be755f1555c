"""Gates: ``--fail-under "robust_accuracy@eps=0.1>=0.5"`` — conditions on the report's metrics that
make ``bastion audit`` exit with code 1 when the model falls short (CI gating).

Grammar: ``METRIC OP NUMBER`` with OP one of ``>=``, ``<=``, ``>``, ``<``. METRIC is a name from the
report's ``metrics`` (``bastion audit --list-metrics`` prints them): a base name, an optional
qualifier in brackets and an optional ``@eps=VALUE``, e.g. ``clean_accuracy``,
``robust_accuracy@eps=0.3`` (the per-input worst case over every evasion probe),
``robust_accuracy[square]@eps=0.1``, ``patch_success[untargeted]``, ``certified_accuracy@r=0.5``,
``attack_success_rate[badnets]@rate=0.05`` (poisoning), ``max_anomaly_index<=2`` (backdoor scan),
``max_membership_tpr@fpr=0.001<=0.005`` (membership inference), ``extraction_fidelity@queries=1000<=0.5``
(model extraction), ``privacy_epsilon_lower_bound<=1`` (the canary audit of the training recipe).

Expressions are checked before the audit runs (syntax, base name, eps among the audited ones); a
gate whose metric was not measured (its probe was skipped or failed) fails, and says why.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError

__all__ = ["METRIC_BASES", "Gate", "evaluate_gates", "parse_gate"]

METRIC_BASES = {
    "clean_accuracy",
    "clean_accuracy_audited",
    "clean_accuracy_ci_low",
    "clean_accuracy_ci_high",
    "robust_accuracy",
    "median_min_perturbation",
    "success_rate",
    "median_perturbation",
    "mean_queries",
    "median_queries",
    "patch_success",
    "deterministic",
    "n_test",
    "certified_accuracy",
    "abstention_rate",
    "median_certified_radius",
    "mean_certified_radius",
    "certificate_violations",
    "false_positive_rate",
    "detection_rate",
    "attack_success_rate",
    "accuracy_drop",
    "targets_hit",
    "anomaly_index",
    "max_anomaly_index",
    "backdoor_flagged",
    "membership_auc",
    "membership_balanced_accuracy",
    "membership_tpr",
    "max_membership_tpr",
    "extraction_fidelity",
    "extraction_accuracy",
    "extraction_budget_for_90pct",
    "extraction_equation_fidelity",
    "extraction_equation_queries",
    "extraction_transfer_rate",
    "extraction_noise_rate",
    "extraction_victim_accuracy",
    "privacy_epsilon",
    "privacy_delta",
    "privacy_epsilon_lower_bound",
    "privacy_test_accuracy",
    "privacy_canary_auc",
    "privacy_canary_tpr",
    "privacy_natural_auc",
    "fl_clean_accuracy",
    "fl_accuracy",
    "fl_drop",
    "fl_backdoor_asr",
    "fl_worst_drop",
}
_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_RE = re.compile(
    r"^\s*(?P<base>[a-z_][a-z0-9_]*)(?P<qual>\[[^\]\s]+\])?"
    r"(?:@eps=(?P<eps>[0-9.eE+-]+)|@(?P<at>r|rate|fpr|queries)=(?P<r>[0-9.eE+-]+))?\s*"
    r"(?P<op>>=|<=|>|<)\s*(?P<value>[-+]?[0-9.]+(?:[eE][-+]?\d+)?)\s*$"
)


@dataclass(frozen=True)
class Gate:
    expression: str
    metric: str
    op: str
    threshold: float
    eps: float | None = None

    def evaluate(self, metrics: dict[str, Any]) -> dict[str, Any]:
        value = _lookup(metrics, self.metric, self.eps)
        passed = value is not None and bool(_OPS[self.op](value, self.threshold))
        return {
            "expression": self.expression,
            "metric": self.metric,
            "op": self.op,
            "threshold": self.threshold,
            "value": value,
            "passed": passed,
            "message": None if value is not None else "not measured (its probe was skipped or failed)",
        }


def _lookup(metrics: dict[str, Any], metric: str, eps: float | None) -> float | None:
    if metric in metrics:
        v = metrics[metric]
    elif eps is not None:  # match eps numerically: 0.10 and 0.1 are the same gate
        base = metric.split("@")[0]
        v = next(
            (
                val
                for k, val in metrics.items()
                if k.startswith(base + "@eps=")
                and math.isclose(float(k.split("@eps=")[1]), eps, rel_tol=1e-9, abs_tol=1e-12)
            ),
            None,
        )
    else:
        v = None
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def parse_gate(expression: str, eps_values: list[float] | None = None) -> Gate:
    """Parse one gate expression; ``eps_values`` (the audit's) are the only eps a gate may name."""
    m = _RE.match(expression or "")
    if not m:
        raise UsageError(
            f"--fail-under: cannot parse {expression!r}: write METRIC OP NUMBER, "
            "e.g. 'robust_accuracy@eps=0.1>=0.5' (OP: >=, <=, >, <)"
        )
    base, qual, eps_s, op, value = m["base"], m["qual"] or "", m["eps"], m["op"], float(m["value"])
    if m["r"] is not None:  # a certified radius, a poison rate, an FPR or a query budget: any value measured
        try:
            r = float(m["r"])
        except ValueError:
            raise UsageError(f"--fail-under: bad {m['at']} {m['r']!r} in {expression!r}") from None
        if base not in METRIC_BASES:
            raise UsageError(
                f"--fail-under: unknown metric {base!r} in {expression!r}: choose one of "
                f"{', '.join(sorted(METRIC_BASES))}"
            )
        at = f"{int(r)}" if m["at"] == "queries" and r.is_integer() else f"{r:g}"  # budgets are whole numbers
        return Gate(expression.strip(), f"{base}{qual}@{m['at']}={at}", op, value, None)
    if base not in METRIC_BASES:
        raise UsageError(
            f"--fail-under: unknown metric {base!r} in {expression!r}: choose one of {', '.join(sorted(METRIC_BASES))}"
        )
    eps = None
    if eps_s is not None:
        try:
            eps = float(eps_s)
        except ValueError:
            raise UsageError(f"--fail-under: bad eps {eps_s!r} in {expression!r}") from None
        if eps_values is not None and not any(math.isclose(eps, e, rel_tol=1e-9) for e in eps_values):
            raise UsageError(
                f"--fail-under: eps={eps_s} in {expression!r} is not audited; the audit's eps are "
                f"{', '.join(f'{e:g}' for e in eps_values)} (set them with --eps)"
            )
    metric = f"{base}{qual}" + (f"@eps={eps:g}" if eps is not None else "")
    return Gate(expression.strip(), metric, op, value, eps)


def evaluate_gates(gates: list[Gate], metrics: dict[str, Any]) -> list[dict[str, Any]]:
    return [g.evaluate(metrics) for g in gates]
