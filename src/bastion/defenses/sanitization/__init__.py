"""Poisoned training data and backdoored models: find the poisoned records, scan a model for a backdoor.

Training-set sanitisers return a suspicion score per training record and the records to remove; the backdoor
scanner reverse-engineers a minimal trigger per class of a given model (:class:`NeuralCleanse`, Wang et al.
2019) and returns a :class:`ScanResult`.
"""

from __future__ import annotations

from .neural_cleanse import NeuralCleanse
from .scan_result import ScanResult, anomaly_index, flag_small_outliers

__all__: list[str] = ["NeuralCleanse", "ScanResult", "anomaly_index", "flag_small_outliers"]
