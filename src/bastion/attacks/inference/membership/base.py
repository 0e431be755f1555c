"""The membership-inference contract: ``attack.fit(references)`` where it needs reference models, then
``attack.score(model, x, y) -> (N,)`` — one score per record, higher meaning "more likely a training member".

Attacks read the target model only through its scores (``model.logits``, counted as queries), so a black-box or
remote model works; :meth:`MembershipAttack.score_from` is the pure part (scores in, membership scores out),
which is what tests compare with a direct computation. Attacks with reference models score records *of the
reference population* (the per-record statistics come from the references' behaviour on that very record):
pass ``indices`` (positions in ``references``' population) when ``x`` is not the whole population in order.

:func:`evaluate_membership` turns scores and the true membership into the numbers every attack reports: ROC
AUC, balanced accuracy, TPR at 0.1 % and 1 % FPR (Carlini et al. 2022: the low-FPR regime is where a breach
is), the log-log ROC curve, and the most exposed records.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Self

import numpy as np
import torch
from torch import Tensor

from .... import metrics
from ....errors import UsageError
from ....models.base import Classifier, validate_inputs
from ....registry import Configured, Registry
from .references import ReferenceModels, scores_of

__all__ = [
    "FPRS",
    "MEMBERSHIP_ATTACKS",
    "MembershipAttack",
    "evaluate_membership",
    "get_membership_attack",
    "register_membership",
]

FPRS = (0.001, 0.01)
"""The false-positive rates every membership result reports TPR at (0.1 % and 1 %)."""


@dataclass(kw_only=True, eq=False, repr=False)
class MembershipAttack(Configured):
    """Base class of membership-inference attacks (keyword-only dataclasses, as the poisoning attacks).

    Subclasses set ``needs_references`` and implement :meth:`score_from`; those that need reference models read
    them from ``references_`` (set by :meth:`fit`).

    Args:
        batch_size: inputs per forward pass of the target model.
    """

    name: ClassVar[str] = "membership"
    needs_references: ClassVar[bool] = False
    needs_model: ClassVar[bool] = False  # True: it queries the model itself (score), not only its scores (score_from)

    batch_size: int = 1000

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise UsageError(f"batch_size must be a whole number >= 1, got {self.batch_size!r}")

    def fit(self, references: ReferenceModels | None = None) -> Self:
        """Remember the reference models (required when ``needs_references``); returns self."""
        if self.needs_references and references is None:
            raise UsageError(f"the {self.name} attack needs reference models: pass references=train_references(...)")
        if references is not None and not isinstance(references, ReferenceModels):
            raise UsageError(f"references must be ReferenceModels, got {type(references).__name__}")
        self.references_ = references
        return self

    def _indices(self, n: int, indices: Tensor | None) -> Tensor:
        refs = self._references()
        if indices is None:
            if n != refs.n:
                raise UsageError(
                    f"{n} records given but the reference models were scored on a population of {refs.n}: pass "
                    "indices= (each record's position in that population)"
                )
            return torch.arange(n)
        idx = torch.as_tensor(indices, dtype=torch.long)
        if idx.shape != (n,) or (n and (int(idx.min()) < 0 or int(idx.max()) >= refs.n)):
            raise UsageError(f"indices must be ({n},) positions in the reference population [0, {refs.n})")
        return idx

    def _references(self) -> ReferenceModels:
        refs = getattr(self, "references_", None)
        if refs is None:
            raise UsageError(f"{type(self).__name__} is not fitted: call .fit(references) first")
        return refs

    def score(self, model: Classifier, x: Tensor, y: Tensor, *, indices: Tensor | None = None) -> Tensor:
        """Membership scores (N,) float64 of the records ``(x, y)`` against ``model``; higher = more likely a member."""
        validate_inputs(model, x, y)
        if self.needs_references and not hasattr(self, "references_"):
            raise UsageError(f"{type(self).__name__} is not fitted: call .fit(references) first")
        return self.score_from(scores_of(model, x, self.batch_size), y.cpu(), output=model.output, indices=indices)

    def score_from(
        self, scores: Tensor, y: Tensor, *, output: str = "logits", indices: Tensor | None = None
    ) -> Tensor:  # pragma: no cover - abstract
        """Membership scores from the target's scores (N, n_classes) on the records (the pure part)."""
        raise NotImplementedError


MEMBERSHIP_ATTACKS: Registry[type[MembershipAttack]] = Registry("membership attack")
"""Membership-inference attacks by the name ``bastion privacy --attacks`` and the audit resolve.
``register_membership(name)`` is the class decorator adding a membership attack (a taken name is refused unless
``replace=True``); ``get_membership_attack('lira', online=False)`` builds one."""

register_membership = MEMBERSHIP_ATTACKS.named
get_membership_attack = MEMBERSHIP_ATTACKS.create


def _loglog_curve(fpr: np.ndarray, tpr: np.ndarray, points: int = 60) -> dict[str, list[float]]:
    """The ROC curve sampled at log-spaced FPRs (what a log-log plot needs, in a report-sized list)."""
    lo = max(float(fpr[fpr > 0].min()) if (fpr > 0).any() else 1e-4, 1e-5)
    grid = np.unique(np.concatenate([np.geomspace(lo, 1.0, points), [1.0]]))
    tpr_at = [float(tpr[fpr <= g + 1e-12].max()) for g in grid]
    return {"fpr": grid.tolist(), "tpr": tpr_at}


@dataclass
class _Summary:
    auc: float
    balanced_accuracy: float
    tpr_at_fpr: dict[str, float]
    roc: dict[str, list[float]]
    most_exposed: list[int]
    n_members: int
    n_nonmembers: int


def evaluate_membership(
    scores: Tensor | np.ndarray | Sequence[float],
    is_member: Tensor | np.ndarray | Sequence[bool],
    *,
    fprs: Sequence[float] = FPRS,
    top: int = 10,
) -> dict[str, Any]:
    """What a membership attack achieved: a JSON-able dict.

    ``auc`` (ROC AUC), ``balanced_accuracy`` (the best threshold's (TPR + TNR) / 2), ``tpr_at_fpr`` (keys
    ``"0.001"``, ``"0.01"``: the largest TPR of a threshold whose FPR is at most that, on the ROC curve itself),
    ``roc`` (the curve at log-spaced FPRs), ``most_exposed`` (positions of the ``top`` highest-scoring members: the
    records an attacker identifies first), ``n_members``, ``n_nonmembers``. With N non-members an FPR below 1/N
    admits only thresholds that flag no non-member.
    """
    s = np.asarray(scores.detach().cpu().numpy() if isinstance(scores, Tensor) else scores, dtype=np.float64)
    m = np.asarray(is_member.detach().cpu().numpy() if isinstance(is_member, Tensor) else is_member).astype(bool)
    fpr, tpr, _ = metrics.roc_curve(m, s)
    order = np.argsort(-s, kind="stable")
    exposed = [int(i) for i in order if m[i]][:top]
    summary = _Summary(
        auc=metrics.roc_auc(m, s),
        balanced_accuracy=float(np.max((tpr + 1.0 - fpr) / 2.0)),
        tpr_at_fpr={f"{f:g}": metrics.tpr_at_fpr(m, s, f) for f in fprs},
        roc=_loglog_curve(fpr, tpr),
        most_exposed=exposed,
        n_members=int(m.sum()),
        n_nonmembers=int((~m).sum()),
    )
    out = {f.name: getattr(summary, f.name) for f in fields(summary)}
    if not all(math.isfinite(v) for v in (summary.auc, summary.balanced_accuracy)):  # pragma: no cover
        raise UsageError("membership scores gave a non-finite AUC")
    return out
