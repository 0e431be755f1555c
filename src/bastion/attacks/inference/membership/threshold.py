"""Membership attacks that threshold one signal of the target's output — no reference model.

- ``loss`` (:class:`LossAttack`): Yeom, Giacomelli, Fredrikson & Jha 2018, "Privacy Risk in Machine Learning:
  Analyzing the Connection to Overfitting": a training member has a lower loss; score = -loss.
- ``confidence``: the true class's probability (Salem et al. 2019's top-1 variant with the label).
- ``entropy``: -entropy of the prediction (Salem et al. 2019; Song & Mittal 2021): members get confident outputs.
- ``modified-entropy``: Song & Mittal 2021, "Systematic Evaluation of Privacy Risks of Machine Learning Models":
  -Mentr(p, y), which rewards only confident *correct* predictions.

Each scores the records it is given; any threshold on the score is an attack, and the ROC over all thresholds
is what :func:`~bastion.attacks.inference.membership.evaluate_membership` reports. They are the baselines the
reference-model attacks must beat, especially at low false-positive rates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from .base import MembershipAttack, register_membership
from .signals import confidence, cross_entropy, entropy, modified_entropy

__all__ = ["ConfidenceAttack", "EntropyAttack", "LossAttack", "ModifiedEntropyAttack", "SignalAttack"]


@dataclass(kw_only=True, eq=False, repr=False)
class SignalAttack(MembershipAttack):
    """Score = ``signal(scores, y, output)``: one per-record statistic of the target's output, higher = member."""

    signal: ClassVar[Callable[..., Tensor]]  # (scores, y, output) -> (N,); a staticmethod in subclasses

    def score_from(self, scores: Tensor, y: Tensor, *, output: str = "logits", indices: Tensor | None = None) -> Tensor:
        return type(self).signal(scores, y, output)


@register_membership("loss")
class LossAttack(SignalAttack):
    """Yeom et al. 2018: score = -cross-entropy of the true label."""

    signal = staticmethod(lambda s, y, out: -cross_entropy(s, y, out))


@register_membership("confidence")
class ConfidenceAttack(SignalAttack):
    """Score = the probability the model gives the true label."""

    signal = staticmethod(confidence)


@register_membership("entropy")
class EntropyAttack(SignalAttack):
    """Score = -entropy of the prediction (the label is not used)."""

    signal = staticmethod(lambda s, y, out: -entropy(s, out))


@register_membership("modified-entropy")
class ModifiedEntropyAttack(SignalAttack):
    """Song & Mittal 2021: score = -Mentr(p, y)."""

    signal = staticmethod(lambda s, y, out: -modified_entropy(s, y, out))
