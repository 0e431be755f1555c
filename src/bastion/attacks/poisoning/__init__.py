"""Poisoning attacks: corrupt the training data, never the model.

``attack.poison(data) -> PoisonedData`` (:mod:`.base`): the poisoned training set plus an exact record of
what changed. Backdoors (:mod:`.backdoor`): :class:`BadNets` (patch trigger), :class:`Blended` (blended
pattern); their :class:`Trigger` (:mod:`.triggers`). :func:`evaluate_poisoning` measures a model trained on
the result: clean accuracy and the backdoor's attack success rate; :func:`run_poisoning` (:mod:`.experiment`)
poisons, trains a recipe on the result with the one trainer and measures it next to the clean recipe.
"""

from __future__ import annotations

from .backdoor import BackdoorAttack, BadNets, Blended
from .base import (
    POISONING_ATTACKS,
    PoisonedData,
    PoisoningAttack,
    evaluate_poisoning,
    get_poisoning_attack,
    read_poison_mask,
    register_poisoning,
)
from .experiment import PoisoningRun, clean_reference, run_poisoning, train_recipe
from .triggers import Trigger

__all__ = [
    "POISONING_ATTACKS",
    "BackdoorAttack",
    "BadNets",
    "Blended",
    "PoisonedData",
    "PoisoningAttack",
    "PoisoningRun",
    "Trigger",
    "clean_reference",
    "evaluate_poisoning",
    "get_poisoning_attack",
    "read_poison_mask",
    "register_poisoning",
    "run_poisoning",
    "train_recipe",
]
