"""Spectral signatures (Tran, Li & Madry 2018, "Spectral Signatures in Backdoor Attacks", NeurIPS).

Threat model: a dirty-label backdoor — poisoned records carry a trigger and the attacker's label. In the learned
representation of their (new) class they differ from the clean records in one direction, and if the two
populations' means are far apart relative to their spread, that direction is the top singular vector of the
class's centred representations. Algorithm 1 of the paper, per class y with representations R (n_y, d):

    R_c = R - mean(R);   v = top right singular vector of R_c;   tau_i = (R_c[i] . v)^2

and the records with the highest tau in each class — ``eps_multiplier`` (the paper's 1.5) times the expected
number of poisoned records — are removed. Here that number is ``expected_rate * n_y``: ``expected_rate`` is the
expected share of poisoned records **within a poisoned class** (ART's ``expected_pp_poison``; the paper poisons 5%
and 10% of the target class). The rule removes the same share from *every* class, clean or not, so about
``eps_multiplier * expected_rate`` of the clean records go too — by design, whatever the data.

Scores are the paper's tau (centred, squared; ART and the authors' code project the *uncentred* representations),
comparable within a class, not across classes. The guarantee (the paper's Lemma 3.1) needs the mean separation to
dominate the spread of both populations; when the poisoned records are themselves spread out (a BadNets poison
drawn from nine source digits) the top direction can miss them — ``benchmarks/sanitization_peers.py`` measures it.

Shapes: representations (N, d) float64; labels (N,); scores (N,); removals (N,) bool.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ...errors import UsageError
from ...models.features import Pool
from .base import Sanitizer, finite_number, per_class, register_sanitizer

__all__ = ["SpectralSignatures", "remove_top_share", "spectral_signature_scores"]


def spectral_signature_scores(features: Tensor) -> Tensor:
    """Tran et al.'s outlier score of each representation (n, d) of one class: (n,) float64, the squared projection
    of the centred representation on the top right singular vector.

    >>> r = torch.tensor([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0], [9.0, 1.0]])
    >>> spectral_signature_scores(r).tolist()
    [9.0, 4.0, 1.0, 36.0]
    """
    return _signature(features)[0]


def _signature(features: Tensor) -> tuple[Tensor, Tensor]:
    """The scores (n,) and the singular values of the centred representations (n, d), float64."""
    r = features.to(torch.float64)
    if r.shape[0] < 2:
        return r.new_zeros(r.shape[0]), r.new_zeros(0)
    centred = r - r.mean(dim=0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    return (centred @ vh[0]).square(), s


def remove_top_share(scores: Tensor, groups: list[Tensor], share: float) -> Tensor:
    """(N,) bool: in each group of positions, the ``ceil(share * n_g)`` records with the highest ``scores`` (N,).

    >>> remove_top_share(torch.tensor([0.1, 0.9, 0.5, 0.3]), [torch.tensor([0, 1]), torch.tensor([2, 3])], 0.5).tolist()
    [False, True, True, False]
    """
    remove = torch.zeros(scores.shape[0], dtype=torch.bool)
    for idx in groups:
        k = min(idx.numel(), math.ceil(share * idx.numel() - 1e-9))
        if k > 0:
            remove[idx[torch.topk(scores[idx], k).indices]] = True
    return remove


@register_sanitizer("spectral")
class SpectralSignatures(Sanitizer):
    """Spectral signatures: per class, remove the records whose centred representations project most on the top
    singular vector.

    Args:
        expected_rate: expected share of poisoned records within a poisoned class, in (0, 1) (default 0.05, the
            paper's smaller setting; give the share you fear — a 5% all-to-one poison of a 10-class set is about a
            third of its target class).
        eps_multiplier: how many times ``expected_rate`` to remove from every class (the paper's 1.5); the share
            removed, ``eps_multiplier * expected_rate``, must be below 1.
        layer, pool, batch_size: see :class:`~.base.Sanitizer` (default layer: the penultimate).

    Fitted: ``layer_``, ``scores_`` (N,), ``remove_`` (N,), ``singular_values_`` ((C, 2) the top two singular
    values of each class's centred representations, NaN for a class with fewer than 2 records), ``seconds_``.
    """

    def __init__(
        self,
        *,
        expected_rate: float = 0.05,
        eps_multiplier: float = 1.5,
        layer: str | None = None,
        pool: Pool = "flatten",
        batch_size: int = 500,
    ) -> None:
        super().__init__(layer=layer, pool=pool, batch_size=batch_size)
        if not finite_number(expected_rate) or not 0 < expected_rate < 1:
            raise UsageError(
                f"expected_rate is the share of a class you expect poisoned, strictly between 0 and 1 "
                f"(e.g. 0.05), got {expected_rate!r}"
            )
        if not finite_number(eps_multiplier) or eps_multiplier <= 0:
            raise UsageError(f"eps_multiplier must be a number > 0 (the paper uses 1.5), got {eps_multiplier!r}")
        if eps_multiplier * expected_rate >= 1:
            raise UsageError(
                f"eps_multiplier * expected_rate = {eps_multiplier * expected_rate:g} would remove every record of "
                "every class: lower expected_rate or eps_multiplier so that their product is below 1"
            )
        self.expected_rate = float(expected_rate)
        self.eps_multiplier = float(eps_multiplier)

    def _fit(self, features: Tensor, y: Tensor, n_classes: int) -> tuple[Tensor, Tensor]:
        groups = per_class(y, n_classes)
        scores = torch.zeros(features.shape[0], dtype=torch.float64)
        sv = torch.full((n_classes, 2), math.nan, dtype=torch.float64)
        for c, idx in enumerate(groups):
            if idx.numel() < 2:
                continue
            scores[idx], s = _signature(features[idx])
            sv[c, : min(2, s.numel())] = s[:2]
        self.singular_values_ = sv
        return scores, remove_top_share(scores, groups, self.eps_multiplier * self.expected_rate)

    def _details(self) -> dict[str, Any]:
        return {"singular_values": self.singular_values_.tolist()}
