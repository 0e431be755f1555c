"""Extraction attacks: steal a copy of a model that can only be queried.

``attack.extract(victim, budget, eval_x=..., eval_y=...) -> ExtractionResult`` (:mod:`.base`): the copy, the exact
number of queries spent and the fidelity curve. :class:`EquationSolving` (:mod:`.equation_solving`: Tramèr et al.
2016, exact recovery of logistic models from d + 1 probability answers), :class:`KnockoffNets` (:mod:`.knockoff`:
Orekondy et al. 2019, random and adaptive query selection from a surrogate pool), :class:`JacobianAugmentation`
(:mod:`.jacobian`: Papernot et al. 2017, a substitute grown from a small seed set). :func:`transferability`
(:mod:`.transferability`): how often PGD on the copy fools the victim, against noise of the same size.
"""

from __future__ import annotations

from .base import (
    EXTRACTION_ATTACKS,
    CurvePoint,
    ExtractionAttack,
    ExtractionResult,
    SoftTargets,
    default_copy_arch,
    get_extraction_attack,
    is_label_only,
    query_victim,
    register_extraction,
    train_copy,
)
from .equation_solving import EquationSolving, logistic_arch
from .jacobian import JacobianAugmentation, jacobian_step
from .knockoff import AdaptiveKnockoffNets, KnockoffNets, kmeans
from .transferability import transferability

__all__ = [
    "EXTRACTION_ATTACKS",
    "AdaptiveKnockoffNets",
    "CurvePoint",
    "EquationSolving",
    "ExtractionAttack",
    "ExtractionResult",
    "JacobianAugmentation",
    "KnockoffNets",
    "SoftTargets",
    "default_copy_arch",
    "get_extraction_attack",
    "is_label_only",
    "jacobian_step",
    "kmeans",
    "logistic_arch",
    "query_victim",
    "register_extraction",
    "train_copy",
    "transferability",
]
