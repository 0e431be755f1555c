"""Attacks. Every attack is registered in :data:`ATTACKS` under its CLI name and built by
:func:`get_attack`; all share the contract of :class:`Attack` and return an :class:`AttackResult`."""

from __future__ import annotations

from .base import ATTACKS, Attack, AttackResult, get_attack, register
from .evasion import APGD, APGDDLR, APGDT, EOT, FGSM, MIFGSM, PGD, CarliniWagnerL2, DeepFool, Ensemble

__all__ = [
    "ATTACKS", "Attack", "AttackResult", "get_attack", "register",
    "FGSM", "PGD", "MIFGSM", "APGD", "APGDDLR", "APGDT", "CarliniWagnerL2", "DeepFool", "Ensemble", "EOT",
]
