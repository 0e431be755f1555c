"""The Classifier interface, its adapters, the model zoo and :func:`load_model`."""

from __future__ import annotations

from .architectures import ARCHITECTURES, register_architecture
from .base import BaseClassifier, Classifier, validate_inputs
from .features import HasFeatures
from .loading import load_model, save_model
from .onnx import OnnxClassifier
from .remote import RemoteClassifier
from .sklearn import SklearnClassifier
from .torch import TorchClassifier
from .wrapped import WrappedClassifier, unwrap, wrapper_chain
from .zoo import ZOO, load_zoo

__all__ = [
    "ARCHITECTURES",
    "ZOO",
    "BaseClassifier",
    "Classifier",
    "HasFeatures",
    "OnnxClassifier",
    "RemoteClassifier",
    "SklearnClassifier",
    "TorchClassifier",
    "WrappedClassifier",
    "load_model",
    "load_zoo",
    "register_architecture",
    "save_model",
    "unwrap",
    "validate_inputs",
    "wrapper_chain",
]
