"""Attacks. Every attack is registered in :data:`ATTACKS` under its CLI name and built by
:func:`get_attack`; all share the contract of :class:`Attack` and return an :class:`AttackResult`."""

from __future__ import annotations

from . import evasion
from .base import ATTACKS, Attack, AttackResult, get_attack, register
from .evasion import *  # noqa: F403 - every evasion attack (evasion.__all__); poisoning and the rest join here

__all__ = ["ATTACKS", "Attack", "AttackResult", "get_attack", "register"]
__all__ += evasion.__all__
