"""LiRA: the likelihood-ratio attack (Carlini, Chien, Nasr, Song, Terzis & Tramèr 2022, "Membership Inference
Attacks From First Principles", IEEE S&P).

Threat model: the attacker can train models with the target's recipe on data from the same distribution (the
reference models of :func:`~.references.train_references`, each on a random half of a population that contains
the records to test) and query the target's scores. For each record the references' logit-scaled confidences
``phi`` (:func:`~.signals.logit_confidence`) on that very record form two samples — from the models trained with
it ("in") and without it ("out") — each modelled as a Gaussian; the target's ``phi`` is then tested:

- **online**: ``score = log N(phi; mu_in, sigma_in^2) - log N(phi; mu_out, sigma_out^2)`` (the paper's
  Algorithm 1), with the reference code's median as ``mu``;
- **offline** (out-models only): the one-sided test ``Pr[Z < phi]``, ``Z ~ N(mu_out, sigma_out^2)``, reported as
  its z-score ``(phi - mu_out) / sigma_out`` (the same ranking, without the saturation of the normal CDF);
- ``fixed_variance=True``: one global ``sigma_in`` and ``sigma_out`` over all records (the paper's choice below
  ~64 reference models; per-record variances need many models).

The reference code (``generate_ours`` in tensorflow/privacy's LiRA) computes the global ``sigma_out`` from the
*in* sample; here it is the out sample's, as the paper's text defines. A record with no in-model (or no
out-model) among the references — rare with many references — borrows the other side's mean shifted by the
median in/out gap over the records that have both, and the global deviation: the pure function
:func:`lira_scores` documents it, and tests compare it with a direct per-record computation.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ....errors import UsageError
from .base import MembershipAttack, register_membership
from .signals import logit_confidence

__all__ = ["LiRA", "lira_scores"]

_EPS = 1e-30


def _masked_stats(phi: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per record (column): median, standard deviation (ddof 0) and count of ``phi`` where ``mask``."""
    vals = np.where(mask, phi, np.nan)
    with warnings.catch_warnings():  # a record without in- or out-models is handled by the caller
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(vals, axis=0), np.nanstd(vals, axis=0), mask.sum(axis=0)


def _logpdf(x: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    s = sigma + _EPS
    return -0.5 * ((x - mu) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi)


def lira_scores(
    phi_target: Tensor | np.ndarray,
    phi_ref: Tensor | np.ndarray,
    keep: Tensor | np.ndarray,
    *,
    online: bool = True,
    fixed_variance: bool = False,
) -> np.ndarray:
    """LiRA's membership scores (n,) from the target's ``phi`` (n,), the references' ``phi`` (k, n) and ``keep``
    (k, n) (reference j trained on record i). Higher = more likely a member.

    >>> ref = np.array([[4.0, 0.0], [5.0, 1.0], [0.0, 4.0], [1.0, 5.0]])
    >>> keep = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=bool)
    >>> s = lira_scores(np.array([4.5, 0.5]), ref, keep)   # record 0 looks in, record 1 looks out
    >>> bool(s[0] > 0 > s[1])
    True
    """
    t = np.asarray(phi_target, dtype=np.float64)
    r = np.asarray(phi_ref, dtype=np.float64)
    k = np.asarray(keep, dtype=bool)
    if r.shape != k.shape or r.ndim != 2 or t.shape != (r.shape[1],):
        raise UsageError(f"phi_ref and keep must be (k, n) and phi_target (n,), got {r.shape}, {k.shape}, {t.shape}")
    mu_out, sd_out, n_out = _masked_stats(r, ~k)
    mu_in, sd_in, n_in = _masked_stats(r, k)
    both = (n_in > 0) & (n_out > 0)
    gap = float(np.median(mu_in[both] - mu_out[both])) if both.any() else 0.0
    mu_out = np.where(n_out > 0, mu_out, mu_in - gap)
    mu_in = np.where(n_in > 0, mu_in, mu_out + gap)
    g_out = float(np.std(r[~k])) if (~k).any() else float(np.std(r))
    g_in = float(np.std(r[k])) if k.any() else g_out
    if fixed_variance:
        sd_out, sd_in = np.full_like(t, g_out), np.full_like(t, g_in)
    else:  # a deviation from fewer than two values says nothing: use the global one there
        sd_out = np.where(n_out > 1, sd_out, g_out)
        sd_in = np.where(n_in > 1, sd_in, g_in)
    if not online:
        return (t - mu_out) / (sd_out + _EPS)
    return _logpdf(t, mu_in, sd_in) - _logpdf(t, mu_out, sd_out)


@register_membership("lira")
@dataclass(kw_only=True, eq=False, repr=False)
class LiRA(MembershipAttack):
    """Carlini et al. 2022's likelihood-ratio attack on the logit-scaled confidence.

    Args:
        online: use in- and out-models (Algorithm 1); False: out-models only (the offline attack).
        fixed_variance: one variance per side for all records (True), one per record (False), or ``None``
            (default): global below 64 reference models, per record from 64 on — the paper's advice (Sec. VI-A).
    """

    needs_references = True

    online: bool = True
    fixed_variance: bool | None = None

    def score_from(self, scores: Tensor, y: Tensor, *, output: str = "logits", indices: Tensor | None = None) -> Tensor:
        refs = self._references()
        idx = self._indices(int(y.shape[0]), indices)
        if refs.logits.shape[2] != scores.shape[1]:
            raise UsageError(f"the references have {refs.logits.shape[2]} classes, the target {scores.shape[1]}")
        z = refs.logits[:, idx]  # (k, n, C)
        phi_ref = logit_confidence(z.reshape(-1, z.shape[2]), y.repeat(refs.k), refs.output).reshape(refs.k, -1)
        phi_t = logit_confidence(scores, y, output)
        fixed = refs.k < 64 if self.fixed_variance is None else bool(self.fixed_variance)
        s = lira_scores(
            phi_t.numpy(), phi_ref.numpy(), refs.keep[:, idx].numpy(), online=self.online, fixed_variance=fixed
        )
        return torch.from_numpy(s)


@register_membership("lira-offline")
@dataclass(kw_only=True, eq=False, repr=False)
class LiRAOffline(LiRA):
    """:class:`LiRA` with ``online=False`` by default: out-models only (one set of references serves any record)."""

    online: bool = False
