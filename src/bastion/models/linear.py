"""Logistic-regression models as torch modules: what the zoo's ``cancer-logreg`` and ``digits-logreg`` are, and what
equation solving (:mod:`bastion.attacks.extraction.equation_solving`) returns.

:class:`LogisticModel` maps inputs (N, *input_shape) to class **probabilities** (N, n_classes): standardisation
inside the model (``(x - shift) / scale``, as scikit-learn's ``StandardScaler``), then one affine map and the
logistic function (binary: ``[1 - sigmoid(z), sigmoid(z)]``, computed as a softmax over ``[0, z]`` so that both
probabilities keep their relative precision) or the softmax (multiclass). Whatever the standardisation, the whole
map from ``x`` to the log-odds is affine; :meth:`LogisticModel.affine` returns that composed ``(W, b)`` — the
closed form an extraction attack is checked against.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import UsageError

__all__ = ["LogisticModel", "logistic_from_sklearn"]


class LogisticModel(nn.Module):
    """Binary or multinomial logistic regression returning probabilities.

    Args:
        input_shape: shape of one input (flattened inside). n_classes: 2 (one output unit, the log-odds of class 1)
            or more (one unit per class, softmax).

    Buffers ``shift`` and ``scale`` (d,) standardise the flattened input; ``linear`` holds the coefficients of the
    standardised features. Built with ``shift = 0``, ``scale = 1`` (no standardisation).
    """

    shift: Tensor
    scale: Tensor

    def __init__(self, input_shape: tuple[int, ...], n_classes: int) -> None:
        super().__init__()
        if n_classes < 2:
            raise UsageError(f"a logistic model needs at least 2 classes, got {n_classes}")
        d = math.prod(input_shape)
        self.input_shape, self.n_classes = tuple(input_shape), int(n_classes)
        self.linear = nn.Linear(d, 1 if n_classes == 2 else n_classes)
        self.register_buffer("shift", torch.zeros(d))
        self.register_buffer("scale", torch.ones(d))

    def log_odds(self, x: Tensor) -> Tensor:
        """(N, n_classes) logits whose softmax is the output: ``[0, z]`` for binary models."""
        z = self.linear((x.flatten(1) - self.shift) / self.scale)
        return torch.cat([torch.zeros_like(z), z], dim=1) if self.n_classes == 2 else z

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.log_odds(x), dim=1)

    @torch.no_grad()
    def affine(self) -> tuple[Tensor, Tensor]:
        """The composed affine map in float64: ``W`` (units, d) and ``b`` (units,) with ``log_odds = x W^T + b``
        on the flattened input (standardisation folded in)."""
        w = self.linear.weight.double() / self.scale.double()
        return w, self.linear.bias.double() - w @ self.shift.double()

    @torch.no_grad()
    def set_affine(self, weight: Tensor, bias: Tensor) -> LogisticModel:
        """Set the composed map to ``(weight, bias)`` with no standardisation; returns the model."""
        self.shift.zero_()
        self.scale.fill_(1.0)
        self.linear.weight.copy_(weight.to(self.linear.weight.dtype))
        self.linear.bias.copy_(bias.to(self.linear.bias.dtype))
        return self


def logistic_from_sklearn(scaler: Any, estimator: Any, input_shape: tuple[int, ...]) -> LogisticModel:
    """A :class:`LogisticModel` computing what ``make_pipeline(scaler, estimator).predict_proba`` computes, from a
    fitted ``StandardScaler`` (or ``None``) and a fitted ``LogisticRegression`` with classes ``0..K-1``."""
    coef = np.asarray(estimator.coef_, dtype=np.float64)
    classes = np.asarray(estimator.classes_)
    if not np.array_equal(classes, np.arange(len(classes))):
        raise UsageError(f"the estimator's classes must be 0..{len(classes) - 1}, got {list(classes)[:10]}")
    model = LogisticModel(input_shape, len(classes))
    with torch.no_grad():
        model.linear.weight.copy_(torch.from_numpy(coef))
        model.linear.bias.copy_(torch.from_numpy(np.atleast_1d(estimator.intercept_).astype(np.float64)))
        if scaler is not None:
            model.shift.copy_(torch.from_numpy(np.asarray(scaler.mean_, dtype=np.float64)))
            model.scale.copy_(torch.from_numpy(np.asarray(scaler.scale_, dtype=np.float64)))
    return model.eval()
