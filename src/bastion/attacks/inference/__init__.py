"""Inference attacks: what a model gives away about its training data.

- :mod:`.membership` — was this record in the training set? (loss, entropy, LiRA, RMIA, shadow models, label-only)
- :mod:`.inversion` — what does a class look like? (MI-FACE, Fredrikson et al. 2015)
- :mod:`.attribute` — what is this record's sensitive feature? (Fredrikson et al. 2014, against a baseline)
"""

from __future__ import annotations

from . import membership
from .attribute import AttributeInference, paired_advantage
from .inversion import InversionResult, MIFace, nearest_distances, recognition_rate

__all__ = [
    "AttributeInference",
    "InversionResult",
    "MIFace",
    "membership",
    "nearest_distances",
    "paired_advantage",
    "recognition_rate",
]
