"""Defences against model extraction at the endpoint: output policies that limit what a prediction API reveals
beyond the label, their utility cost, and a defended victim as a Classifier.

- :mod:`.output` — :class:`NoPolicy`, :class:`Rounding`, :class:`TopK`, :class:`LabelOnly`,
  :class:`ReverseSigmoid` (Lee et al. 2019), registered in :data:`OUTPUT_POLICIES`;
- :mod:`.poisoning` — :class:`PredictionPoisoning` (MAD-argmax, Orekondy et al. 2020);
- :func:`utility_cost` — label agreement and calibration loss of a policy on held-out probabilities;
- :class:`PolicyClassifier` — a victim answering through a policy, to attack locally.

Detection of an extracting client (PRADA) is the guard service's: :mod:`bastion.serve.extraction`.
"""

from __future__ import annotations

from .defended import PolicyClassifier
from .output import (
    OUTPUT_POLICIES,
    LabelOnly,
    NoPolicy,
    OutputPolicy,
    ReverseSigmoid,
    Rounding,
    TopK,
    get_output_policy,
    keep_label,
)
from .poisoning import PredictionPoisoning, angular_deviation, initialised_like, mad_target, surrogate_gram
from .utility import utility_cost

__all__ = [
    "OUTPUT_POLICIES",
    "LabelOnly",
    "NoPolicy",
    "OutputPolicy",
    "PolicyClassifier",
    "PredictionPoisoning",
    "ReverseSigmoid",
    "Rounding",
    "TopK",
    "angular_deviation",
    "get_output_policy",
    "initialised_like",
    "keep_label",
    "mad_target",
    "surrogate_gram",
    "utility_cost",
]
