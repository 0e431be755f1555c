"""bastion: security testing and hardening for machine-learning models.

The public API is re-exported here; ``tests/test_api.py`` pins ``__all__``. The command line
(:mod:`bastion.cli`) is not imported: the library never needs it.
"""

from __future__ import annotations

from . import attacks, audit, data, defenses, metrics, models, registry
from ._version import __version__
from .attacks import Attack, AttackResult, get_attack
from .data import Dataset, load_dataset
from .errors import BastionError, MissingExtraError, UnsafeModelError, UsageError
from .models import Classifier, TorchClassifier, load_model, save_model
from .threat import ThreatModel

__all__ = [
    "Attack",
    "AttackResult",
    "BastionError",
    "Classifier",
    "Dataset",
    "MissingExtraError",
    "ThreatModel",
    "TorchClassifier",
    "UnsafeModelError",
    "UsageError",
    "__version__",
    "attacks",
    "audit",
    "data",
    "defenses",
    "get_attack",
    "load_dataset",
    "load_model",
    "metrics",
    "models",
    "registry",
    "save_model",
]
