"""Membership inference: was this record in the model's training set?

One interface (:mod:`.base`): ``attack.fit(references)`` where it needs reference models, then
``attack.score(model, x, y)`` — one score per record, higher = more likely a member — and
:func:`evaluate_membership` for AUC, balanced accuracy and TPR at 0.1 % / 1 % FPR.

- no reference model (:mod:`.threshold`): ``loss`` (Yeom et al. 2018), ``confidence``, ``entropy``,
  ``modified-entropy`` (Song & Mittal 2021);
- with reference models (:mod:`.references`: the target's recipe on random halves of a population, cached):
  ``lira`` (Carlini et al. 2022, online and offline), ``rmia`` (Zarifzadeh et al. 2024), ``shadow`` (Shokri et
  al. 2017: an attack classifier trained on the references' outputs);
- from labels only: ``label-only`` (Choquette-Choo et al. 2021: robustness to translations or noise);
- :mod:`.game`: the membership game that measures a training recipe, and audit mode for a given model.
"""

from __future__ import annotations

from .base import (
    FPRS,
    MEMBERSHIP_ATTACKS,
    MembershipAttack,
    evaluate_membership,
    get_membership_attack,
    register_membership,
)
from .game import MembershipSetup, membership_audit, membership_game, run_membership_attacks
from .label_only import LabelOnlyAttack, shifted_copies
from .lira import LiRA, LiRAOffline, lira_scores
from .references import Recipe, ReferenceModels, half_mask, scores_of, train_references
from .rmia import RMIA, RMIAOnline, rmia_scores
from .shadow import ShadowModelAttack, shadow_features
from .signals import confidence, cross_entropy, entropy, logit_confidence, modified_entropy
from .threshold import ConfidenceAttack, EntropyAttack, LossAttack, ModifiedEntropyAttack, SignalAttack

__all__ = [
    "FPRS",
    "MEMBERSHIP_ATTACKS",
    "RMIA",
    "ConfidenceAttack",
    "EntropyAttack",
    "LabelOnlyAttack",
    "LiRA",
    "LiRAOffline",
    "LossAttack",
    "MembershipAttack",
    "MembershipSetup",
    "ModifiedEntropyAttack",
    "RMIAOnline",
    "Recipe",
    "ReferenceModels",
    "ShadowModelAttack",
    "SignalAttack",
    "confidence",
    "cross_entropy",
    "entropy",
    "evaluate_membership",
    "get_membership_attack",
    "half_mask",
    "lira_scores",
    "logit_confidence",
    "membership_audit",
    "membership_game",
    "modified_entropy",
    "register_membership",
    "rmia_scores",
    "run_membership_attacks",
    "scores_of",
    "shadow_features",
    "shifted_copies",
    "train_references",
]
