"""Poisoning attacks: corrupt the training data, never the model.

``attack.poison(data) -> PoisonedData`` (:mod:`.base`): the poisoned training set plus an exact record of
what changed. Backdoors (:mod:`.backdoor`): :class:`BadNets` (patch trigger), :class:`Blended` (blended
pattern); their :class:`Trigger` (:mod:`.triggers`). :class:`LabelFlip` (:mod:`.label_flip`: random,
class-pair and loss-maximising flips), :class:`CleanLabel` (:mod:`.clean_label`: Turner et al.'s
label-consistent backdoor) and :class:`FeatureCollision` (:mod:`.feature_collision`: Shafahi et al.'s Poison
Frogs). :func:`evaluate_poisoning` measures a model trained on the result: clean accuracy, a backdoor's attack
success rate, a targeted attack's targets hit; :func:`run_poisoning` (:mod:`.experiment`) poisons, trains a
recipe on the result with the one trainer and measures it next to the clean recipe.
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
from .clean_label import CleanLabel, corner_trigger
from .experiment import PoisoningRun, clean_reference, run_poisoning, train_recipe
from .feature_collision import FeatureCollision, train_linear_head
from .label_flip import LabelFlip
from .triggers import Trigger

__all__ = [
    "POISONING_ATTACKS",
    "BackdoorAttack",
    "BadNets",
    "Blended",
    "CleanLabel",
    "FeatureCollision",
    "LabelFlip",
    "PoisonedData",
    "PoisoningAttack",
    "PoisoningRun",
    "Trigger",
    "clean_reference",
    "corner_trigger",
    "evaluate_poisoning",
    "get_poisoning_attack",
    "read_poison_mask",
    "register_poisoning",
    "run_poisoning",
    "train_linear_head",
    "train_recipe",
]
