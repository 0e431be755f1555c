"""Activation-anomaly detector over several layers (the feature ensemble of Lee et al. 2018, "A Simple
Unified Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks", without its
adversarially trained weights).

Adversarial perturbations that flip the output leave traces before the last layer: early feature maps
respond to the high-frequency noise, middle ones to the half-formed wrong class. Per layer ``l`` the
activation is average-pooled over space (a (N, C, H, W) map becomes (N, C)) and modelled by Gaussians —
class-conditional with a tied covariance (Lee's choice, default) or one Gaussian for all data
(``class_conditional=False``) — giving a per-layer score

    s_l(x) = min_c (f_l(x) - mu_{l,c})^T Sigma_l^-1 (f_l(x) - mu_{l,c}).

Layers live on different scales (the distance grows with the feature dimension), so each is
standardised with the mean and standard deviation of its scores on the fit data,
z_l(x) = (s_l(x) - m_l) / sd_l, and the layers are combined by

- ``combine="sum"`` (default): the mean of the z-scores. Lee et al. weight layers with a logistic
  regression fitted on adversarial examples of a *known* attack; without that knowledge equal weights
  on standardised scores are the neutral choice, and averaging keeps the false-positive noise of any
  single layer down.
- ``combine="max"``: the largest z-score — flags an input anomalous in any one layer; noisier on
  clean data, so at the same false-positive rate it needs a higher threshold.

Both are differentiable w.r.t. the input (``max`` almost everywhere). Default layers: the output of
every ``nn.ReLU`` module (of every ``PolyAct`` in an HE-friendly network; for a model with no activation, such as
a logistic regression, the input of its last linear layer). Shapes: inputs (N, *input_shape) -> scores (N,).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from ...errors import UsageError
from ...models.base import Classifier, validate_inputs
from ...models.features import HasFeatures, Pool
from .base import register_detector
from .feature_based import FeatureDetector
from .mahalanobis import ClassGaussians, fit_class_gaussians, min_mahalanobis

__all__ = ["ActivationDetector"]

Combine = Literal["sum", "max"]


@register_detector("activations")
class ActivationDetector(FeatureDetector):
    """Gaussian anomaly scores of several layers' pooled activations, standardised and combined.

    Args:
        layers: module names (``"NAME"``: output, ``"NAME:input"``: input); default (``None``): the output
            of every ``nn.ReLU`` of the model.
        pool: 'avg' (spatial mean, default) or 'flatten'.
        class_conditional: class-conditional Gaussians with a tied covariance per layer (Lee et al.), or
            one Gaussian per layer.
        combine: 'sum' (mean of per-layer z-scores) or 'max' (largest z-score); see the module docstring.
        ridge: covariance regularisation, relative to the mean feature variance of the layer.
        batch_size: inputs per forward pass.

    Fitted: ``model_``, ``layers_``, ``gaussians_`` (one per layer), ``layer_mean_``, ``layer_std_``
    ((L,) statistics of the per-layer scores on the fit data); after :meth:`calibrate` ``threshold_``,
    ``fpr_``, ``scale_``.
    """

    differentiable = True

    def __init__(
        self,
        *,
        layers: Sequence[str] | None = None,
        pool: Pool = "avg",
        class_conditional: bool = True,
        combine: Combine = "sum",
        ridge: float = 1e-3,
        batch_size: int = 500,
    ) -> None:
        super().__init__(batch_size=batch_size)
        if layers is not None and (
            isinstance(layers, str) or not layers or not all(isinstance(s, str) for s in layers)
        ):
            raise UsageError(
                f"layers must be a non-empty list of module names (or None for every ReLU), got {layers!r}"
            )
        if pool not in ("avg", "flatten"):
            raise UsageError(f"pool must be 'avg' or 'flatten', got {pool!r}")
        if combine not in ("sum", "max"):
            raise UsageError(f"combine must be 'sum' (mean of z-scores) or 'max', got {combine!r}")
        if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not ridge >= 0:
            raise UsageError(f"ridge must be a number >= 0 (e.g. 1e-3), got {ridge!r}")
        self.layers = list(layers) if layers is not None else None
        self.pool = pool
        self.class_conditional = bool(class_conditional)
        self.combine = combine
        self.ridge = float(ridge)

    def _layer_scores(self, feats: list[Tensor]) -> Tensor:
        """(N, L) float64 raw per-layer scores."""
        return torch.stack([min_mahalanobis(f, g) for f, g in zip(feats, self.gaussians_, strict=True)], dim=1)

    def _fit(self, model: Classifier, x: Tensor, y: Tensor) -> None:
        fm = self._model_features()  # the model, checked at fit to declare the features capability
        self.layers_ = list(self.layers) if self.layers is not None else _default_layers(fm)
        feats = fm.features(x, self.layers_, pool=self.pool, batch_size=self.batch_size)
        labels = y if self.class_conditional else torch.zeros_like(y)
        self.gaussians_: list[ClassGaussians] = [fit_class_gaussians(f, labels, ridge=self.ridge) for f in feats]
        raw = self._layer_scores(feats)
        self.layer_mean_ = raw.mean(dim=0)
        self.layer_std_ = raw.std(dim=0).clamp_min(1e-12)

    def layer_scores(self, x: Tensor) -> Tensor:
        """Standardised per-layer scores (N, L) (no gradients), columns in the order of ``layers_``."""
        model = self._model_features()
        validate_inputs(self.model_, x, name="inputs")
        if x.shape[0] == 0:
            return x.new_zeros(0, len(self.layers_))
        feats = model.features(x, self.layers_, pool=self.pool, batch_size=self.batch_size)
        return self._standardise(self._layer_scores(feats)).to(x.dtype)

    def _standardise(self, raw: Tensor) -> Tensor:
        return (raw - self.layer_mean_.to(raw.device)) / self.layer_std_.to(raw.device)

    def score_features(self, feats: list[Tensor]) -> Tensor:
        """The combined standardised per-layer scores (N,) from the activations of ``layers_``."""
        zs = self._standardise(self._layer_scores(feats))
        return zs.mean(dim=1) if self.combine == "sum" else zs.amax(dim=1)


def _default_layers(fm: HasFeatures) -> list[str]:
    """The activation outputs (ReLU, or the polynomial activations of an HE-friendly network); for a model with
    none (a logistic regression) the input of its last linear layer, the only hidden representation it has."""
    try:
        return list(fm.feature_layers("relu"))
    except UsageError:
        return [fm.penultimate_layer]
