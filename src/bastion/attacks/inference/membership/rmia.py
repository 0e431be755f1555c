"""RMIA: the relative membership-inference attack (Zarifzadeh, Liu, Mohammadi & Shokri 2024, "Low-Cost High-Power
Membership Inference Attacks", ICML).

A record ``x`` is tested against many population records ``z`` at once. With ``Pr(x | theta)`` the target's
probability of ``x``'s label and ``Pr(x)`` its average over reference models, the likelihood ratio against ``z``
is ``LR(x, z) = (Pr(x | theta) / Pr(x)) / (Pr(z | theta) / Pr(z))`` and the score is the share of ``z`` with
``LR(x, z) > gamma`` (the paper's ``gamma = 1``). Normalising by ``Pr(x)`` removes the record's difficulty;
comparing with ``z`` removes the target's overall calibration — so it stays strong with very few references.

- **online**: ``Pr(x)`` is the mean over every reference model (in and out);
- **offline** (default, the paper's low-cost setting): ``Pr(x)`` from the out-models only, corrected for the
  missing in-models by the paper's linear approximation ``Pr(x) = ((1 + a) Pr_out(x) + (1 - a)) / 2``; a record
  with no out-model among the references (a quarter of them with two references) gets an out-estimate from
  each in-model by inverting that line, ``(Pr_in + a - 1) / a``, as ML Privacy Meter's reference code does.

Here the ``z`` are the other scored records (the population the references were scored on; the paper samples
them from the population too), compared through a sort, so scoring N records costs O(N log N).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ....errors import UsageError
from .base import MembershipAttack, register_membership
from .signals import confidence

__all__ = ["RMIA", "rmia_scores"]


def _p_x(p_ref: np.ndarray, keep: np.ndarray, online: bool, a: float) -> np.ndarray:
    """Pr(x) per record from the references' probabilities (k, n) and ``keep`` (k, n)."""
    if online:
        return p_ref.mean(axis=0)
    out = ~keep
    n_out = out.sum(axis=0)
    mean_out = np.where(n_out > 0, (p_ref * out).sum(axis=0) / np.maximum(n_out, 1), 0.0)
    converted = np.clip((p_ref + a - 1.0) / a, 0.0, 1.0) if a > 0 else np.clip((p_ref - 0.7) / 0.3, 0.0, 1.0)
    from_in = (converted * keep).sum(axis=0) / np.maximum(keep.sum(axis=0), 1)
    p_out = np.where(n_out > 0, mean_out, from_in)
    return (1.0 + a) / 2.0 * p_out + (1.0 - a) / 2.0


def rmia_scores(
    p_target: Tensor | np.ndarray,
    p_ref: Tensor | np.ndarray,
    keep: Tensor | np.ndarray,
    *,
    online: bool = False,
    offline_a: float = 0.3,
    gamma: float = 1.0,
) -> np.ndarray:
    """RMIA scores (n,) in [0, 1] from the target's true-label probabilities (n,), the references' (k, n) and
    ``keep`` (k, n); every record is compared with every other one (its ``z``). Higher = more likely a member.

    >>> p_t = np.array([0.99, 0.5, 0.5, 0.5])          # the target is unusually sure of record 0
    >>> p_r = np.full((2, 4), 0.5)
    >>> rmia_scores(p_t, p_r, np.zeros((2, 4), dtype=bool)).tolist()
    [1.0, 0.0, 0.0, 0.0]
    """
    t = np.asarray(p_target, dtype=np.float64)
    r = np.asarray(p_ref, dtype=np.float64)
    k = np.asarray(keep, dtype=bool)
    if r.shape != k.shape or r.ndim != 2 or t.shape != (r.shape[1],):
        raise UsageError(f"p_ref and keep must be (k, n) and p_target (n,), got {r.shape}, {k.shape}, {t.shape}")
    if t.size < 2:
        raise UsageError("RMIA compares each record with the others: score at least 2 records")
    ratio = t / np.maximum(_p_x(r, k, online, offline_a), 1e-30)
    z = np.sort(ratio)
    below = np.searchsorted(z, ratio / gamma, side="left")  # z with ratio_z < ratio_x / gamma, i.e. LR > gamma
    self_counted = (ratio > ratio / gamma).astype(np.int64)  # x against itself: LR = 1 > gamma only if gamma < 1
    return (below - self_counted) / (t.size - 1)


@register_membership("rmia")
@dataclass(kw_only=True, eq=False, repr=False)
class RMIA(MembershipAttack):
    """Zarifzadeh et al. 2024's relative likelihood-ratio attack.

    Args:
        online: average ``Pr(x)`` over all references (True) or the out-references only (False, default).
        offline_a: the offline linear approximation's ``a`` in [0, 1] (ML Privacy Meter tunes it on a paired
            reference model; 0.3 is its default).
        gamma: the likelihood-ratio threshold (1 in the paper).
    """

    needs_references = True

    online: bool = False
    offline_a: float = 0.3
    gamma: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= float(self.offline_a) <= 1.0:
            raise UsageError(f"offline_a must lie in [0, 1], got {self.offline_a!r}")
        if not float(self.gamma) > 0:
            raise UsageError(f"gamma must be > 0, got {self.gamma!r}")

    def score_from(self, scores: Tensor, y: Tensor, *, output: str = "logits", indices: Tensor | None = None) -> Tensor:
        refs = self._references()
        idx = self._indices(int(y.shape[0]), indices)
        z = refs.logits[:, idx]
        p_ref = confidence(z.reshape(-1, z.shape[2]), y.repeat(refs.k), refs.output).reshape(refs.k, -1)
        p_t = confidence(scores, y, output)
        s = rmia_scores(
            p_t.numpy(),
            p_ref.numpy(),
            refs.keep[:, idx].numpy(),
            online=self.online,
            offline_a=float(self.offline_a),
            gamma=float(self.gamma),
        )
        return torch.from_numpy(s)


@register_membership("rmia-online")
@dataclass(kw_only=True, eq=False, repr=False)
class RMIAOnline(RMIA):
    """:class:`RMIA` with ``online=True`` by default: ``Pr(x)`` averaged over every reference model."""

    online: bool = True
