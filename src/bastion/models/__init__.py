"""The Classifier interface, its adapters, the model zoo and :func:`load_model`."""

from __future__ import annotations

from .architectures import ARCHITECTURES, register_architecture
from .base import BaseClassifier, Classifier, validate_inputs
from .sklearn import SklearnClassifier
from .torch import TorchClassifier
from .zoo import ZOO, load_zoo

__all__ = [
    "Classifier", "BaseClassifier", "validate_inputs", "TorchClassifier", "SklearnClassifier",
    "ARCHITECTURES", "register_architecture", "ZOO", "load_zoo",
]
