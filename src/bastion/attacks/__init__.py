"""Attacks: evasion (white-box and black-box). Every attack is in :data:`ATTACKS` by CLI name."""

from __future__ import annotations

from .base import ATTACKS, Attack, AttackResult, get_attack, register
from .evasion import FGSM, MIFGSM, PGD

__all__ = ["ATTACKS", "Attack", "AttackResult", "get_attack", "register", "FGSM", "PGD", "MIFGSM"]
