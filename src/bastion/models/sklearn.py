"""Adapter for scikit-learn estimators.

Black-box through ``predict_proba`` (scores are probabilities, no gradients). Linear models
(``LogisticRegression``, ``LinearSVC``, ``SGDClassifier``, ``RidgeClassifier`` — anything with
``coef_`` and ``intercept_`` and a linear decision function) are white-box: their decision
function is rebuilt in torch, so gradient attacks apply exactly.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import UsageError
from .base import BaseClassifier

__all__ = ["SklearnClassifier"]


def _is_linear(est: object) -> bool:
    from sklearn.linear_model import LogisticRegression, RidgeClassifier, SGDClassifier
    from sklearn.svm import LinearSVC

    return isinstance(est, (LogisticRegression, LinearSVC, SGDClassifier, RidgeClassifier)) and hasattr(est, "coef_")


class SklearnClassifier(BaseClassifier):
    """Wrap a fitted scikit-learn classifier.

    Args:
        estimator: a fitted classifier with ``predict_proba`` (or a linear model).
        input_shape: shape of one input; inputs are flattened to (N, prod(input_shape)) for sklearn.
        bounds: valid input range.
        white_box: ``None`` = white-box exactly when the model is linear; ``False`` forces black-box.
    """

    def __init__(
        self,
        estimator: Any,
        *,
        input_shape: tuple[int, ...] | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        white_box: bool | None = None,
    ) -> None:
        classes = getattr(estimator, "classes_", None)
        if classes is None:
            raise UsageError(f"{type(estimator).__name__} is not fitted (no classes_): fit it before wrapping")
        n_features = int(getattr(estimator, "n_features_in_", 0)) or (int(np.prod(input_shape)) if input_shape else 0)
        if not n_features:
            raise UsageError("cannot tell the number of input features: pass input_shape=")
        input_shape = tuple(input_shape) if input_shape else (n_features,)
        if math.prod(input_shape) != n_features:
            raise UsageError(
                f"input_shape {input_shape} has {math.prod(input_shape)} features but the model expects {n_features}"
            )
        if not np.array_equal(np.asarray(classes), np.arange(len(classes))):
            raise UsageError(
                f"the model's classes must be 0..{len(classes) - 1} (got {list(classes)[:10]}): encode labels as integers first"
            )
        linear = _is_linear(estimator)
        self.white_box = linear if white_box is None else bool(white_box and linear)
        if white_box and not linear:
            raise UsageError(
                f"{type(estimator).__name__} is not linear: gradients are not available, use white_box=False"
            )
        if not self.white_box and not hasattr(estimator, "predict_proba"):
            raise UsageError(f"{type(estimator).__name__} has no predict_proba: black-box attacks need scores")
        super().__init__(
            n_classes=max(2, len(classes)),
            input_shape=input_shape,
            bounds=bounds,
            output="logits" if self.white_box else "probabilities",
        )
        self.estimator = estimator
        if self.white_box:
            coef = torch.tensor(np.asarray(estimator.coef_), dtype=torch.float32)
            intercept = torch.tensor(np.atleast_1d(estimator.intercept_), dtype=torch.float32)
            if coef.shape[0] == 1:  # binary: decision d -> logits (0, d)
                coef = torch.cat([torch.zeros_like(coef), coef])
                intercept = torch.cat([torch.zeros(1), intercept])
            self._coef, self._intercept = coef, intercept

    def _scores(self, x: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1)
        if self.white_box:
            return flat.to(self._coef.dtype) @ self._coef.T.to(flat.device) + self._intercept.to(flat.device)
        p = self.estimator.predict_proba(flat.detach().cpu().numpy())
        return torch.as_tensor(np.asarray(p), dtype=torch.float32, device=x.device)
