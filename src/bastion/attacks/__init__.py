"""Attacks. Evasion attacks are registered in :data:`ATTACKS` under their CLI names and built by
:func:`get_attack`; all share the contract of :class:`Attack` and return an :class:`AttackResult`.
Poisoning attacks live in :mod:`bastion.attacks.poisoning` (``attack.poison(data) -> PoisonedData``), extraction
attacks in :mod:`bastion.attacks.extraction` (``attack.extract(victim, budget) -> ExtractionResult``), privacy
attacks in :mod:`bastion.attacks.inference` (membership, inversion, attribute inference)."""

from __future__ import annotations

from . import evasion, extraction, inference, poisoning
from .base import ATTACKS, Attack, AttackResult, get_attack, register
from .evasion import *  # noqa: F403 - every evasion attack (evasion.__all__); poisoning and the rest join here

__all__ = ["ATTACKS", "Attack", "AttackResult", "extraction", "get_attack", "inference", "poisoning", "register"]
__all__ += evasion.__all__
