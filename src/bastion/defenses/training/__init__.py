"""Adversarial training (PGD-AT, TRADES, fast AT); see :mod:`.adversarial`."""

from __future__ import annotations

from .adversarial import DEFENSES, AdversarialTrainingConfig, adversarial_train, pgd_examples

__all__ = ["DEFENSES", "AdversarialTrainingConfig", "adversarial_train", "pgd_examples"]
