"""Detectors whose score is a function of a classifier's internal activations (Mahalanobis, activations).

They need the declared features capability (:class:`~bastion.models.features.HasFeatures`, which every
:class:`~bastion.models.TorchClassifier` has) and read the layers they were fitted on, ``layers_``, in the
same forward pass as the logits. :meth:`FeatureDetector.score_features` maps those activations to scores,
so a caller that already holds them (the guard service reads the penultimate features for its drift
monitor in the same pass) scores without a second forward pass.
"""

from __future__ import annotations

from torch import Tensor

from ...errors import UsageError
from ...models.base import Classifier
from ...models.features import HasFeatures, Pool
from .base import Detector

__all__ = ["FeatureDetector"]


class FeatureDetector(Detector):
    """Base class of detectors scoring pooled activations of named layers.

    Subclasses set ``pool`` and, when fitted, ``layers_`` (the layer names read), and implement
    :meth:`score_features`.
    """

    pool: Pool = "avg"
    layers_: list[str]

    def _check_model(self, model: Classifier) -> None:
        if not isinstance(model, HasFeatures):
            raise UsageError(
                f"{type(self).__name__} reads the activations of a torch model: wrap the network in "
                f"bastion.models.TorchClassifier (got {type(model).__name__}, which declares no "
                "features capability)"
            )

    def _model_features(self) -> HasFeatures:
        model = self._require_fitted("reading features")
        if not isinstance(model, HasFeatures):  # pragma: no cover - checked at fit
            raise UsageError(f"{type(model).__name__} declares no features capability")
        return model

    def score_features(self, feats: list[Tensor]) -> Tensor:  # pragma: no cover - abstract
        """Scores (N,) from the pooled activations of ``layers_`` [(N, d_l)], on the autograd graph."""
        raise NotImplementedError

    def _logits_and_score(self, x: Tensor, *, bpda: bool) -> tuple[Tensor, Tensor]:
        z, feats = self._model_features().logits_and_features(x, self.layers_, pool=self.pool)
        return z, self.score_features(feats).to(x.dtype)
