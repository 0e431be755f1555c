"""Adversarial training (PGD-AT, TRADES, fast AT); see :mod:`.adversarial`."""

from __future__ import annotations

from .adversarial import DEFENSES, FAST_INITS, LR_SCHEDULES, AdversarialTrainingConfig, adversarial_train, pgd_examples

__all__ = ["DEFENSES", "FAST_INITS", "LR_SCHEDULES", "AdversarialTrainingConfig", "adversarial_train", "pgd_examples"]
