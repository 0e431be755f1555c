"""Constrained black-box evasion of tabular models (gradient-boosted trees included).

A batched random search in the spirit of Square Attack (Andriushchenko et al. 2020) adapted to
constrained feature spaces (Simonetto et al. 2022, "A Unified Framework for Adversarial Attack and
Training in Constrained Feature Space"): each iteration proposes, for every record not yet fooled,
a change of a random subset of its mutable features — to a vertex of the Linf box (x0 +- eps) or a
Gaussian step for L2/L1 —, maps the proposal onto the :class:`FeatureConstraints` with
:meth:`FeatureConstraints.project`, queries the model once for the whole batch and keeps the
proposal when the margin loss on log-scores does not decrease (ties are accepted, so the search
walks across the flat regions of tree ensembles). The subset size shrinks over the run.

Threat model: the ``norm`` ball of radius ``eps`` over the mutable features, intersected with the
bounds and the feature constraints. Only ``model.logits`` is used, under ``no_grad``: any
Classifier works, including scikit-learn trees. ``max_queries`` forward samples per record, at most.
Every returned record satisfies ``constraints.check`` when the attacked record is feasible itself
(``constraints.snap(x)`` makes it so); the attack starts from ``project(x0, x0)``.

Budget, one source of truth: the attack's ``eps`` and ``norm`` (its ThreatModel, onto which the
library projects and in which it reports norms). ``FeatureConstraints.eps``/``norm`` are a
convenience of constraint files: with ``eps=None`` the attack takes them from the constraints, and
when both are given they must agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ...errors import UsageError
from ...models.base import Classifier
from ...threat import ThreatModel
from ..base import Attack, AttackBatch, positive, register
from .constraints import FeatureConstraints
from .losses import as_logits, margin_loss

__all__ = ["ConstrainedAttack"]


@register("tabular")
@dataclass(kw_only=True, eq=False, repr=False)
class ConstrainedAttack(Attack):
    """Constrained random search on the margin of the scores (black-box).

    Args:
        constraints: a :class:`FeatureConstraints` (``None``: every feature mutable and continuous).
        eps, norm: the perturbation budget over the mutable features ('linf', 'l2' or 'l1');
            ``eps=None`` takes it from ``constraints``.
        max_queries: forward samples per record (the first one scores the start).
        p_init: initial fraction of the mutable features changed per proposal (halved over the run).
    """

    norms = ("linf", "l2", "l1")
    needs_gradients = False

    eps: float | None = None
    constraints: FeatureConstraints | None = None
    max_queries: int = positive(1000, integer=True)
    p_init: float = 0.3

    def __post_init__(self) -> None:
        constraints = self.constraints
        if constraints is not None and not isinstance(constraints, FeatureConstraints):
            raise UsageError(f"constraints must be a FeatureConstraints (or None), got {type(constraints).__name__}")
        if constraints is not None and constraints.eps is not None:
            if self.eps is None:
                self.eps, self.norm = constraints.eps, constraints.norm
            elif not math.isclose(float(self.eps), constraints.eps) or self.norm != constraints.norm:
                raise UsageError(
                    f"the attack's budget ({self.norm}, eps={self.eps}) disagrees with the constraints' "
                    f"({constraints.norm}, eps={constraints.eps}): give it once"
                )
        if self.eps is None:
            raise UsageError("ConstrainedAttack needs eps: pass eps= or constraints with an eps")
        super().__post_init__()
        if not 0 < self.p_init <= 1:
            raise UsageError(f"p_init must lie in (0, 1], got {self.p_init!r}")
        self.p_init = float(self.p_init)

    def _constraints(self, model: Classifier, threat: ThreatModel) -> FeatureConstraints:
        d = math.prod(model.input_shape)
        if self.constraints is None:
            return FeatureConstraints(d, norm=threat.norm, eps=threat.eps)
        if self.constraints.n_features != d:
            raise UsageError(f"the constraints describe {self.constraints.n_features} features but the model takes {d}")
        return self.constraints.with_budget(threat.norm, threat.eps)

    def _p(self, i: int) -> float:
        # Square Attack's schedule, rescaled to max_queries: halve p at fixed fractions of the run
        frac = i / self.max_queries
        halvings = sum(frac > f for f in (0.001, 0.005, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8))
        return self.p_init / 2**halvings

    @torch.no_grad()
    def _attack(self, batch: AttackBatch) -> Tensor:
        model, x, threat, generator = batch.model, batch.x, batch.threat, batch.generator
        cons = self._constraints(model, threat)
        n, shape = x.shape[0], x.shape
        x0 = x.reshape(n, -1)
        eps = threat.radius  # a fixed-budget attack: eps is set (ThreatModel.radius refuses None)
        bounds = threat.bounds

        def score(z: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
            s = as_logits(model.logits(z.reshape(-1, *shape[1:])), model.output)
            rows = batch.rows(idx)
            return margin_loss(s, rows.y, rows.targets), rows.is_adversarial(s)

        rows = torch.arange(n, device=x.device)
        cur = cons.project(x0, x0, bounds=bounds)
        cur_loss, done = score(cur, rows)
        queries = torch.ones(n, dtype=torch.long, device=x.device)
        mutable = cons.mutable_mask(x.device)
        n_mut = int(mutable.sum())
        if n_mut == 0 or eps == 0:
            batch.budget.add_per_sample("queries", queries)
            return cur.reshape(shape)
        for i in range(1, self.max_queries):
            act = (~done).nonzero().flatten()
            if act.numel() == 0:
                break
            k = max(1, round(self._p(i) * n_mut))
            r = torch.rand(act.numel(), x0.shape[1], generator=generator, device=x.device)
            idx = r.masked_fill(~mutable, -1.0).topk(k, dim=1).indices
            base, ref = cur[act], x0[act]
            cand = base.clone()
            if threat.norm == "linf":
                sign = torch.randint(0, 2, idx.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
                cand.scatter_(1, idx, ref.gather(1, idx) + eps * sign)
            else:
                g = torch.randn(idx.shape, generator=generator, device=x.device, dtype=x.dtype)
                scale = eps / math.sqrt(k) if threat.norm == "l2" else eps / k
                cand.scatter_add_(1, idx, g * scale)
            cand = cons.project(ref, cand, bounds=bounds)
            loss, adv = score(cand, act)
            queries[act] += 1
            take = (loss >= cur_loss[act]) | adv
            cur[act[take]] = cand[take]
            cur_loss[act[take]] = loss[take]
            done[act[adv]] = True
        batch.budget.add_per_sample("queries", queries)
        return cons.project(x0, cur, bounds=bounds).reshape(shape)
