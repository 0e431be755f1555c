"""Shadow models with a trained attack classifier (Shokri, Stronati, Song & Shmatikov 2017, "Membership Inference
Attacks Against Machine Learning Models", IEEE S&P).

The reference models play the shadow models: each was trained on a known half of the population, so its
outputs on every population record come labelled "in" or "out". An attack model learns to tell the two apart
from the output alone — one per class, as in the paper — and is then applied to the target's outputs. Features
are the log-probabilities sorted in decreasing order plus the log-probability of the true label (the log keeps
the resolution near probability 1, where an overfit model's members sit). The attack model is scikit-learn's
gradient-boosted trees (``HistGradientBoostingClassifier``, seeded); the paper used small neural networks — any
probabilistic classifier fits the method. A class whose shadow records are all in or all out falls back to one
attack model trained on every class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import torch
from torch import Tensor

from .base import MembershipAttack, register_membership
from .references import ReferenceModels
from .signals import log_probabilities

__all__ = ["ShadowModelAttack", "shadow_features"]

_POOLED = -1


def shadow_features(scores: Tensor, y: Tensor, output: str = "logits") -> np.ndarray:
    """(N, K + 1) features of each output: sorted log-probabilities (clipped at -30) and the true label's."""
    logp = log_probabilities(scores, output).clamp_min(-30.0)
    ranked = logp.sort(dim=1, descending=True).values
    return torch.cat([ranked, logp.gather(1, y.view(-1, 1))], dim=1).numpy()


@register_membership("shadow")
@dataclass(kw_only=True, eq=False, repr=False)
class ShadowModelAttack(MembershipAttack):
    """Shokri et al. 2017 with the reference models as shadow models; :meth:`fit` trains the attack models.

    Args:
        per_class: one attack model per class (the paper) as well as the pooled one.
        max_records: at most this many (shadow, record) pairs per attack model (drawn with ``seed``).
        seed: the attack models' and the subsample's seed.
    """

    needs_references = True

    per_class: bool = True
    max_records: int = 20_000
    seed: int = 0

    def fit(self, references: ReferenceModels | None = None) -> Self:
        super().fit(references)
        refs = self._references()
        k, _, c = refs.logits.shape
        feats = shadow_features(refs.logits.reshape(-1, c), refs.labels.repeat(k), refs.output)
        member = refs.keep.reshape(-1).numpy()
        labels = refs.labels.repeat(k).numpy()
        rng = np.random.default_rng(self.seed)
        groups = [(_POOLED, np.arange(labels.size))]
        if self.per_class:
            groups += [(int(cls), np.nonzero(labels == cls)[0]) for cls in np.unique(labels)]
        self.models_: dict[int, Any] = {}
        for cls, rows in groups:
            if rows.size > self.max_records:
                rows = rng.choice(rows, self.max_records, replace=False)
            if member[rows].all() or not member[rows].any():
                continue  # nothing to learn: these records use the pooled model
            self.models_[cls] = self._classifier().fit(feats[rows], member[rows])
        return self

    def _classifier(self) -> Any:
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(max_iter=100, random_state=self.seed)

    def score_from(self, scores: Tensor, y: Tensor, *, output: str = "logits", indices: Tensor | None = None) -> Tensor:
        self._references()
        feats = shadow_features(scores, y, output)
        out = np.zeros(y.shape[0])
        labels = y.numpy()
        for cls in np.unique(labels):
            rows = labels == cls
            model = self.models_.get(int(cls), self.models_.get(_POOLED))
            out[rows] = model.predict_proba(feats[rows])[:, 1] if model is not None else 0.5
        return torch.from_numpy(out)
