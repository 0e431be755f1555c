"""Poisoned training data and backdoored models: find the poisoned records, scan a model for a backdoor.

Training-set sanitisers return a suspicion score per training record and the records to remove; the backdoor
scanner reverse-engineers a minimal trigger per class of a given model.
"""

from __future__ import annotations

__all__: list[str] = []
