"""Attacks. Every attack is registered in :data:`ATTACKS` under its CLI name and built by
:func:`get_attack`; all share the contract of :class:`Attack` and return an :class:`AttackResult`."""

from __future__ import annotations

from .base import ATTACKS, Attack, AttackResult, get_attack, register
from .evasion import (
    APGD,
    APGDDLR,
    APGDT,
    EOT,
    FGSM,
    MIFGSM,
    PGD,
    AdversarialPatch,
    BoundaryAttack,
    CarliniWagnerL2,
    ConstrainedAttack,
    DeepFool,
    Ensemble,
    FeatureConstraints,
    HopSkipJump,
    RandomNoise,
    SimBA,
    Square,
    TransferAttack,
    train_surrogate,
)

__all__ = [
    "APGD",
    "APGDDLR",
    "APGDT",
    "ATTACKS",
    "EOT",
    "FGSM",
    "MIFGSM",
    "PGD",
    "AdversarialPatch",
    "Attack",
    "AttackResult",
    "BoundaryAttack",
    "CarliniWagnerL2",
    "ConstrainedAttack",
    "DeepFool",
    "Ensemble",
    "FeatureConstraints",
    "HopSkipJump",
    "RandomNoise",
    "SimBA",
    "Square",
    "TransferAttack",
    "get_attack",
    "register",
    "train_surrogate",
]
