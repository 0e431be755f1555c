"""Mahalanobis-distance detector (Lee, Lee, Lee & Shin 2018, "A Simple Unified Framework for Detecting
Out-of-Distribution Samples and Adversarial Attacks", NeurIPS).

Fit: class-conditional Gaussians with one shared (tied) covariance on the penultimate features f(x)
of the clean training data,

    mu_c = mean of f(x_i) over y_i = c,     Sigma = 1/N * sum_i (f(x_i) - mu_{y_i}) (f(x_i) - mu_{y_i})^T.

Score (higher = more suspicious): the squared Mahalanobis distance to the closest class,

    score(x) = min_c (f(x) - mu_c)^T Sigma^-1 (f(x) - mu_c),

i.e. minus Lee et al.'s confidence score M(x). ``Sigma`` is regularised before inversion —
``Sigma + ridge * mean(diag Sigma) * I`` — because penultimate ReLU features often contain units that
never fire on the training data (zero variance); the inverse is taken through an eigendecomposition
in float64 and stored as a whitening matrix ``W`` (``Sigma^-1 = W W^T``), so the score is a squared
Euclidean distance in whitened space: cheap, non-negative and differentiable w.r.t. the input.

Not implemented from the paper: the input pre-processing step (a small FGSM move towards higher
confidence) and the logistic-regression feature ensemble trained on adversarial examples (which
presumes knowing the attack; :class:`~.activations.ActivationDetector` combines several layers
without it). Differentiable: an adaptive attacker backpropagates through the score.

Shapes: inputs (N, *input_shape); features (N, d); scores (N,).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...errors import UsageError
from ...models.base import Classifier, validate_inputs
from ...models.features import Pool
from .base import register_detector
from .feature_based import FeatureDetector

__all__ = ["ClassGaussians", "MahalanobisDetector", "fit_class_gaussians", "min_mahalanobis"]


class ClassGaussians:
    """Class means and a shared precision, as ``means_w = mu W`` (C, d) and ``whitening = W`` (d, d), float64.

    ``classes`` (C,) are the labels present in the fit data (a class without samples has no Gaussian).
    """

    def __init__(self, means: Tensor, whitening: Tensor, classes: Tensor) -> None:
        self.means = means
        self.whitening = whitening
        self.means_w = means @ whitening
        self.classes = classes

    def distances(self, f: Tensor) -> Tensor:
        """Squared Mahalanobis distance of each row of ``f`` (N, d) to every class mean: (N, C), float64."""
        z = f.to(torch.float64) @ self.whitening.to(f.device)
        diff = z[:, None, :] - self.means_w.to(f.device)[None, :, :]
        return diff.square().sum(dim=2)

    def precision(self) -> Tensor:
        """Sigma^-1 = W W^T (d, d), float64."""
        return self.whitening @ self.whitening.T


def fit_class_gaussians(f: Tensor, y: Tensor, *, ridge: float = 1e-3) -> ClassGaussians:
    """Class-conditional Gaussians with a tied covariance on features ``f`` (N, d), labels ``y`` (N,).

    The covariance is the pooled within-class covariance, regularised by ``ridge`` times its mean
    variance on the diagonal, inverted through ``eigh`` in float64.
    """
    f = f.detach().to(torch.float64)
    if f.dim() != 2 or f.shape[0] != y.shape[0]:
        raise UsageError(f"features must be (N, d) with one label each, got {tuple(f.shape)} and {tuple(y.shape)}")
    classes = torch.unique(y)
    means = torch.stack([f[y == c].mean(dim=0) for c in classes])
    centred = f - means[torch.searchsorted(classes, y)]
    cov = centred.T @ centred / f.shape[0]
    d = cov.shape[0]
    level = float(cov.diagonal().mean())
    cov = cov + (ridge * level if level > 0 else ridge) * torch.eye(d, dtype=cov.dtype, device=cov.device)
    evals, evecs = torch.linalg.eigh(cov)
    evals = evals.clamp_min(float(evals.max()) * 1e-12 if float(evals.max()) > 0 else 1e-12)
    whitening = evecs * evals.rsqrt()[None, :]
    return ClassGaussians(means, whitening, classes)


def min_mahalanobis(f: Tensor, gaussians: ClassGaussians) -> Tensor:
    """Squared Mahalanobis distance of each row of ``f`` (N, d) to the closest class: (N,), float64."""
    return gaussians.distances(f).amin(dim=1)


@register_detector("mahalanobis")
class MahalanobisDetector(FeatureDetector):
    """Lee et al. 2018: min over classes of the squared Mahalanobis distance of penultimate features.

    Args:
        layer: the module whose activation is used, ``"NAME"`` (its output) or ``"NAME:input"``; default
            (``None``): the input of the model's last ``nn.Linear``, i.e. the penultimate features.
        pool: 'avg' (spatial mean of a (N, C, H, W) activation) or 'flatten'.
        ridge: covariance regularisation, relative to the mean feature variance.
        batch_size: inputs per forward pass.

    Fitted: ``model_``, ``layer_`` (the resolved layer; ``layers_ == [layer_]``), ``gaussians_`` (:class:`ClassGaussians`),
    after :meth:`calibrate` ``threshold_``, ``fpr_``, ``scale_``.
    """

    differentiable = True

    def __init__(
        self, *, layer: str | None = None, pool: Pool = "avg", ridge: float = 1e-3, batch_size: int = 500
    ) -> None:
        super().__init__(batch_size=batch_size)
        if pool not in ("avg", "flatten"):
            raise UsageError(f"pool must be 'avg' or 'flatten', got {pool!r}")
        if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not ridge >= 0:
            raise UsageError(f"ridge must be a number >= 0 (e.g. 1e-3), got {ridge!r}")
        if layer is not None and not isinstance(layer, str):
            raise UsageError(f"layer must be a module name (str) or None, got {layer!r}")
        self.layer = layer
        self.pool = pool
        self.ridge = float(ridge)

    def _fit(self, model: Classifier, x: Tensor, y: Tensor) -> None:
        fm = self._model_features()  # the model, checked at fit to declare the features capability
        self.layer_ = self.layer if self.layer is not None else fm.penultimate_layer
        self.layers_ = [self.layer_]
        (feats,) = fm.features(x, self.layers_, pool=self.pool, batch_size=self.batch_size)
        self.gaussians_ = fit_class_gaussians(feats, y, ridge=self.ridge)

    def score_features(self, feats: list[Tensor]) -> Tensor:
        """The squared Mahalanobis distance of the fitted layer's features to the closest class (N,), float64."""
        (f,) = feats
        return min_mahalanobis(f, self.gaussians_)

    def features(self, x: Tensor) -> Tensor:
        """The fitted layer's pooled features (N, d) (no gradients)."""
        model = self._model_features()
        validate_inputs(self.model_, x, name="inputs")
        return model.features(x, self.layers_, pool=self.pool, batch_size=self.batch_size)[0]
