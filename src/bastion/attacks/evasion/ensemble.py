"""An ensemble of attacks run in sequence, AutoAttack's evaluation protocol (Croce & Hein 2020,
"Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks").

Threat model: the members' common Linf / L2 / L1 ball of radius eps intersected with the bounds.
Inputs (N, *input_shape), labels (N,). Each member attacks only the samples that are still robust
(classified correctly, or not yet on the target when ``targets`` are passed) after the members
before it, and a sample's first adversarial point is kept: the result is the per-sample worst case
over the members, so the ensemble's robust accuracy is at most that of any member run alone on the
same inputs (up to the members' random starts, which depend on the samples they see). Every member
starts from the generator state the batch started with, as AutoAttack seeds each of its attacks with
the same seed: an ``Ensemble(seed=s)`` of APGD-CE and APGD-T draws the random starts that AutoAttack's
code with seed ``s`` draws on CPU (``benchmarks/apgd_reference.py`` checks the inputs broken are the same).

``extra`` records the evaluation trail, accumulated over every batch of the call:

- ``robust_accuracy_after``: list of (member name, robust accuracy over all N inputs after it);
- ``robust_after_counts``: the same as counts of robust samples; ``n_samples``: N;
- ``clean_accuracy`` (and ``clean_count``): robust before any member (correct on the clean input).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ...errors import UsageError
from ..base import Attack, AttackBatch, Budget, register

__all__ = ["Ensemble"]


@register("ensemble")
@dataclass(kw_only=True, eq=False, repr=False)
class Ensemble(Attack):
    """Run ``members`` in order on the still-robust samples and keep the worst case per sample.

    Args:
        members: attacks sharing this ensemble's ``eps`` and ``norm``. ``None`` builds AutoAttack's
            "standard" version without its FAB and Square members: APGD-CE, then APGD-T (Linf, L2).
        eps, norm: the threat model, which every member must match.

    The members run with the ensemble's generator (seeded by ``seed``), not their own.
    """

    norms = ("linf", "l2", "l1")

    members: Sequence[Attack] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self._members = self._resolve(self.members)

    def _resolve(self, members: Sequence[Attack] | None) -> list[Attack]:
        if members is None:
            from .apgd import APGD, APGDT

            if self.norm not in APGD.norms:
                raise UsageError(
                    f"the default ensemble (APGD-CE, APGD-T) supports {', '.join(APGD.norms)}; "
                    f"pass members= for norm {self.norm!r}"
                )
            return [APGD(eps=self.radius, norm=self.norm), APGDT(eps=self.radius, norm=self.norm)]
        if isinstance(members, Attack) or not isinstance(members, Sequence) or len(members) == 0:
            raise UsageError("members must be a non-empty list of attacks, e.g. [APGD(eps=...), APGDT(eps=...)]")
        for i, m in enumerate(members):
            if not isinstance(m, Attack):
                raise UsageError(f"members[{i}] is a {type(m).__name__}, not an Attack")
            if m.norm != self.norm or m.eps != self.eps:
                raise UsageError(
                    f"members[{i}] ({type(m).__name__}) has norm={m.norm!r}, eps={m.eps!r} but the ensemble has "
                    f"norm={self.norm!r}, eps={self.eps!r}: every member must share the ensemble's threat model"
                )
        return list(members)

    def _attack(self, batch: AttackBatch) -> Tensor:
        model, x, budget = batch.model, batch.x, batch.budget
        for m in self._members:
            if m.needs_gradients and not model.white_box:
                raise UsageError(f"ensemble member {type(m).__name__} needs gradients but the model is black-box")
        with torch.no_grad():
            robust = ~batch.is_adversarial(model.logits(x))
        extra = budget.extra
        counts: list[int] = extra.setdefault("robust_after_counts", [0] * len(self._members))
        extra["n_samples"] = extra.get("n_samples", 0) + x.shape[0]
        extra["clean_count"] = extra.get("clean_count", 0) + int(robust.sum())
        x_adv = x.clone()
        start = batch.generator.get_state()
        for j, member in enumerate(self._members):
            todo = torch.nonzero(robust).flatten()
            if todo.numel():
                batch.generator.set_state(start)  # every member from the same state, as AutoAttack seeds each attack
                sub = replace(batch.rows(todo), budget=Budget())
                cand = batch.threat.project(sub.x, member._attack(sub))
                budget.backward += sub.budget.backward
                with torch.no_grad():
                    fooled = sub.is_adversarial(model.logits(cand))
                x_adv[todo] = cand  # adversarial points, and the last member's attempt on the rest
                robust[todo[fooled]] = False
            counts[j] += int(robust.sum())
        n = extra["n_samples"]
        extra["clean_accuracy"] = extra["clean_count"] / n
        extra["robust_accuracy_after"] = [(m.name, c / n) for m, c in zip(self._members, counts)]
        return x_adv
