"""Attribute inference: recover a record's sensitive feature from its other features, its label and the model.

Fredrikson, Lantz, Jha, Lin, Page & Ristenpart 2014 ("Privacy in Pharmacogenetics"), as Yeom et al. 2018
formalise it: the attacker knows a record except one sensitive feature, and its label; for each candidate value
``v`` of the feature it queries the model on the record completed with ``v`` and picks the value that maximises
``f(x_v)_y * prior(v)`` — the model's probability of the record's true label, weighted by how common ``v`` is.

A model that leaks nothing still lets an attacker guess from correlations, so the only honest measure is the
**advantage over a baseline** that uses the other features (and the label) alone — a classifier trained on the
attacker's auxiliary data (:meth:`AttributeInference.fit`) — measured on the model's training records, next to
the same on unseen records (Yeom et al.: the gap between the two is what membership adds).
:func:`paired_advantage` gives the difference of the two accuracies with a confidence interval for paired
proportions. Continuous features are discretised into ``n_bins`` quantile bins of the auxiliary data; the
candidate values are the bins' medians.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Self

import numpy as np
import torch
from torch import Tensor

from ...errors import UsageError
from ...models.base import Classifier

__all__ = ["AttributeInference", "paired_advantage"]


def paired_advantage(attack_correct: Any, baseline_correct: Any, confidence: float = 0.95) -> dict[str, float]:
    """``advantage`` = attack accuracy - baseline accuracy on the same records, with a ``confidence`` interval
    from the normal approximation for paired proportions (``se = sqrt(b + c - (b - c)^2 / n) / n`` with ``b``,
    ``c`` the discordant counts).

    >>> r = paired_advantage([1, 1, 1, 0] * 25, [1, 0, 0, 0] * 25)
    >>> round(r["advantage"], 2), round(r["ci_low"], 3), round(r["ci_high"], 3)
    (0.5, 0.402, 0.598)
    """
    from scipy.stats import norm

    a = np.asarray(attack_correct, dtype=bool)
    b_ = np.asarray(baseline_correct, dtype=bool)
    if a.shape != b_.shape or a.ndim != 1 or a.size == 0:
        raise UsageError("attack and baseline results must be one non-empty boolean per record each")
    n = a.size
    b, c = int((a & ~b_).sum()), int((~a & b_).sum())
    diff = (b - c) / n
    se = math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n
    z = float(norm.ppf(0.5 + confidence / 2))
    return {
        "advantage": diff,
        "ci_low": diff - z * se,
        "ci_high": diff + z * se,
        "attack_accuracy": float(a.mean()),
        "baseline_accuracy": float(b_.mean()),
        "n": float(n),
    }


@dataclass(kw_only=True, eq=False, repr=False)
class AttributeInference:
    """Fredrikson et al. 2014's attribute inference, scored against the correlation baseline.

    Args:
        feature: index of the sensitive feature in (F,) records.
        n_bins: quantile bins of a continuous feature (a feature with at most ``n_bins`` distinct values in the
            auxiliary data is taken as categorical, its values as they are).
        prior: ``"baseline"`` (default): weight each candidate by the baseline's probability of it given the other
            features and the label, so the attack adds the model's evidence to what correlations already tell;
            ``"marginal"``: by its frequency alone, Fredrikson et al.'s choice (which assumes the sensitive feature
            independent of the others, and on correlated data loses to the baseline).
        seed: the baseline classifier's seed.
    """

    feature: int
    n_bins: int = 4
    prior: str = "baseline"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.prior not in ("baseline", "marginal"):
            raise UsageError(f"prior must be 'baseline' or 'marginal' (Fredrikson et al.'s), got {self.prior!r}")

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def fit(self, x_aux: Tensor, y_aux: Tensor) -> Self:
        """Learn the candidate values, their prior and the baseline from the attacker's auxiliary records (N, F)."""
        from sklearn.ensemble import HistGradientBoostingClassifier

        if x_aux.dim() != 2:
            raise UsageError(f"attribute inference needs tabular records (N, F), got shape {tuple(x_aux.shape)}")
        if not 0 <= int(self.feature) < x_aux.shape[1]:
            raise UsageError(f"feature must be a column index in [0, {x_aux.shape[1] - 1}], got {self.feature!r}")
        col = x_aux[:, self.feature].double().numpy()
        distinct = np.unique(col)
        if distinct.size <= self.n_bins:
            self.edges_, self.values_ = (distinct[1:] + distinct[:-1]) / 2, distinct
        else:
            self.edges_ = np.quantile(col, np.linspace(0, 1, self.n_bins + 1)[1:-1])
            bins = np.searchsorted(self.edges_, col, side="right")
            self.values_ = np.array([np.median(col[bins == b]) for b in range(self.n_bins)])
        bins = self.bin_of(x_aux)
        self.prior_ = np.bincount(bins, minlength=len(self.values_)) / bins.size
        self.baseline_ = HistGradientBoostingClassifier(max_iter=100, random_state=self.seed).fit(
            self._others(x_aux, y_aux), bins
        )
        return self

    def bin_of(self, x: Tensor) -> np.ndarray:
        """The bin of each record's sensitive value (the truth an inference is scored against)."""
        return np.searchsorted(self.edges_, x[:, self.feature].double().numpy(), side="right")

    def _others(self, x: Tensor, y: Tensor) -> np.ndarray:
        rest = torch.cat([x[:, : self.feature], x[:, self.feature + 1 :]], dim=1).double().numpy()
        return np.concatenate([rest, y.view(-1, 1).double().numpy()], axis=1)

    def baseline(self, x: Tensor, y: Tensor) -> np.ndarray:
        """The baseline's guess of each record's bin from its other features and label."""
        return np.asarray(self.baseline_.predict(self._others(x, y)))

    @torch.no_grad()
    def infer(self, model: Classifier, x: Tensor, y: Tensor) -> np.ndarray:
        """The attack's guess of each record's bin: ``argmax_v f(x_v)_y * prior(v)`` (queries the model once per
        candidate value and record)."""
        if not hasattr(self, "values_"):
            raise UsageError("AttributeInference is not fitted: call .fit(x_aux, y_aux) on the attacker's data")
        lo, hi = model.bounds
        scores = []
        with model.attack_mode():
            for v in self.values_:
                xv = x.clone()
                xv[:, self.feature] = float(np.clip(v, lo, hi))
                z = model.logits(xv)
                p = z if model.output == "probabilities" else torch.softmax(z, dim=1)
                scores.append(p.gather(1, y.view(-1, 1)).squeeze(1).double().cpu().numpy())
        likelihood = np.stack(scores, axis=1)
        if self.prior == "marginal":
            return (likelihood * self.prior_[None, :]).argmax(axis=1)
        prior = np.zeros_like(likelihood)
        prior[:, self.baseline_.classes_] = self.baseline_.predict_proba(self._others(x, y))
        return (likelihood * prior).argmax(axis=1)

    def evaluate(self, model: Classifier, x: Tensor, y: Tensor) -> dict[str, float]:
        """:func:`paired_advantage` of the attack over the baseline on the records ``(x, y)``."""
        truth = self.bin_of(x)
        return paired_advantage(self.infer(model, x, y) == truth, self.baseline(x, y) == truth)
