"""Poisoned training data and backdoored models: find the poisoned records, scan a model for a backdoor.

Training-set sanitisers return a suspicion score per training record and the records to remove:

- :class:`SpectralSignatures` — Tran, Li & Madry 2018, "Spectral Signatures in Backdoor Attacks": per class, the
  squared projection of the centred representations on their top singular vector; a fixed share of every class
  is removed.
- :class:`ActivationClustering` — Chen et al. 2018, "Detecting Backdoor Attacks on Deep Neural Networks by
  Activation Clustering": per class, 2-means of the ICA-reduced last hidden layer; a small, well-separated
  cluster is removed.

    result = get_sanitizer("clustering").sanitize(model, data)   # SanitizationResult: kept data, removed, scores

The backdoor scanner reverse-engineers a minimal trigger per class of a given model (:class:`NeuralCleanse`, Wang
et al. 2019) and returns a :class:`ScanResult`.
"""

from __future__ import annotations

from .base import SANITIZERS, SanitizationResult, Sanitizer, get_sanitizer, register_sanitizer
from .clustering import ActivationClustering
from .neural_cleanse import NeuralCleanse
from .scan_result import ScanResult, anomaly_index, flag_small_outliers
from .spectral import SpectralSignatures

__all__ = [
    "SANITIZERS",
    "ActivationClustering",
    "NeuralCleanse",
    "SanitizationResult",
    "Sanitizer",
    "ScanResult",
    "SpectralSignatures",
    "anomaly_index",
    "flag_small_outliers",
    "get_sanitizer",
    "register_sanitizer",
]
