"""Adversarial-input detection: a detector in front of a classifier, evaluated non-adaptively and adaptively.

- :class:`MahalanobisDetector` — Lee, Lee, Lee & Shin 2018, "A Simple Unified Framework for Detecting
  Out-of-Distribution Samples and Adversarial Attacks": class-conditional Gaussians with a tied
  covariance on penultimate features, score = distance to the closest class.
- :class:`ActivationDetector` — the same Gaussian scores on several layers' pooled activations (Lee et
  al.'s feature ensemble), standardised and combined.
- :class:`FeatureSqueezing` — Xu, Evans & Qi 2018, "Feature Squeezing: Detecting Adversarial Examples in
  Deep Neural Networks": L1 change of the softmax under bit-depth reduction and median smoothing.
- :class:`STRIP` — Gao et al. 2019, "STRIP: A Defence Against Trojan Attacks on Deep Neural Networks":
  backdoor-triggered inputs keep a low-entropy prediction when superimposed on clean images.
- :class:`DetectingClassifier` — model + detector as one Classifier that answers ``REJECT`` (-1).
- :class:`DetectorAwarePGD` — the adaptive attack (Carlini & Wagner 2017, "Adversarial Examples Are Not
  Easily Detected"; Bryniarski et al. 2022, orthogonal PGD; BPDA through squeezers, Athalye et al. 2018).

A detector is only as good as its adaptive evaluation: report the adaptive attack's success against
the combination next to the non-adaptive numbers (the audit's ``detection`` probe does).
"""

from __future__ import annotations

from .activations import ActivationDetector
from .adaptive import DetectorAwarePGD
from .base import DETECTORS, Detector, get_detector, register_detector
from .detecting import REJECT, DetectingClassifier
from .feature_based import FeatureDetector
from .mahalanobis import MahalanobisDetector
from .squeeze import BitDepth, FeatureSqueezing, MedianSmoothing, Squeezer
from .strip import STRIP

__all__ = [
    "DETECTORS",
    "REJECT",
    "STRIP",
    "ActivationDetector",
    "BitDepth",
    "DetectingClassifier",
    "Detector",
    "DetectorAwarePGD",
    "FeatureDetector",
    "FeatureSqueezing",
    "MahalanobisDetector",
    "MedianSmoothing",
    "Squeezer",
    "get_detector",
    "register_detector",
]
