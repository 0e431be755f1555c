"""Adversarial training (PGD-AT, TRADES, fast AT) on the one trainer: :func:`adversarial_train` maps an
:class:`AdversarialTrainingConfig` onto :class:`bastion.training.Trainer`; the inner steps (:mod:`.steps`) are
registered by name in :data:`bastion.training.TRAINING_STEPS`; :mod:`.monitor` holds the held-out PGD monitor
and fast AT's catastrophic-overfitting guard."""

from __future__ import annotations

from .adversarial import (
    DEFENSES,
    FAST_INITS,
    LR_SCHEDULES,
    AdversarialTrainingConfig,
    adversarial_defenses,
    adversarial_train,
    pgd_examples,
)
from .monitor import OverfitGuard, RobustHeldOut
from .steps import PGDAT, TRADES, AdversarialStep, FastAT

__all__ = [
    "DEFENSES",
    "FAST_INITS",
    "LR_SCHEDULES",
    "PGDAT",
    "TRADES",
    "AdversarialStep",
    "AdversarialTrainingConfig",
    "FastAT",
    "OverfitGuard",
    "RobustHeldOut",
    "adversarial_defenses",
    "adversarial_train",
    "pgd_examples",
]
