"""The detector contract: fit on clean data, score inputs, calibrate a threshold at a false-positive rate.

Threat model: an input-filtering defence. A detector sits in front of a classifier and flags inputs
whose score is above a threshold chosen on held-out *clean* data; an adversarial example succeeds
against the combination only if the model misclassifies it **and** the detector does not flag it.
Evaluated non-adaptively (attacks that ignore the detector) it can look strong; the honest number is
the adaptive one (Carlini & Wagner 2017, "Adversarial Examples Are Not Easily Detected"), for which
``differentiable`` says whether an attacker can backpropagate through :meth:`Detector.score`, and
:meth:`Detector.attack_forward` gives the attacker a differentiable (or BPDA) view.

    det = MahalanobisDetector().fit(model, x_train, y_train)   # (N, *input_shape), (N,)
    det.calibrate(x_heldout, fpr=0.05)                         # sets det.threshold_
    flagged = det.detect(x)                                    # (N,) bool: score(x) > threshold_

Fitted state ends with ``_`` (``model_``, ``threshold_``, ...). Detectors are registered by name in
:data:`DETECTORS` (:func:`get_detector`).
"""

from __future__ import annotations

import math
from typing import ClassVar, Self

import torch
from torch import Tensor

from ...errors import UsageError
from ...models.base import Classifier, validate_inputs
from ...registry import Configured, Registry

__all__ = ["DETECTORS", "Detector", "get_detector", "register_detector"]


class Detector(Configured):
    """Base class of adversarial-input detectors.

    Subclasses set ``name`` and ``differentiable`` and implement :meth:`_fit` (on clean inputs and
    labels, with the model in eval mode) and :meth:`_logits_and_score` (one batch; the model's scores
    and the detector score from the same computation, on the autograd graph when gradients are
    enabled). Everything else — validation, batching, calibration, thresholding — is here.

    Args:
        batch_size: inputs per forward pass when scoring.
    """

    name: ClassVar[str] = "detector"
    differentiable: ClassVar[bool] = True

    def __init__(self, *, batch_size: int = 500) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UsageError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.batch_size = batch_size

    # -- subclasses implement ------------------------------------------------------------------
    def _fit(self, model: Classifier, x: Tensor, y: Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _logits_and_score(self, x: Tensor, *, bpda: bool) -> tuple[Tensor, Tensor]:  # pragma: no cover
        raise NotImplementedError

    def _check_model(self, model: Classifier) -> None:
        """Raise UsageError if this detector cannot work with ``model`` (default: any Classifier)."""

    # -- state -----------------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "model_")

    @property
    def is_calibrated(self) -> bool:
        return hasattr(self, "threshold_")

    def _require_fitted(self, what: str) -> Classifier:
        if not self.is_fitted:
            raise UsageError(
                f"{type(self).__name__} is not fitted: call .fit(model, x_train, y_train) on clean data before {what}"
            )
        return self.model_

    def _require_calibrated(self, what: str) -> float:
        self._require_fitted(what)
        if not self.is_calibrated:
            raise UsageError(
                f"{type(self).__name__} has no threshold: call .calibrate(x_clean, fpr=0.05) on "
                f"held-out clean inputs before {what}"
            )
        return self.threshold_

    # -- public API ------------------------------------------------------------------------------
    def fit(self, model: Classifier, x: Tensor, y: Tensor) -> Self:
        """Fit on clean inputs ``x`` (N, *input_shape) with labels ``y`` (N,) of ``model``; returns self.

        Refitting forgets the previous fit and threshold.
        """
        if not isinstance(model, Classifier):
            raise UsageError(f"fit needs a bastion Classifier, got {type(model).__name__}")
        self._check_model(model)
        validate_inputs(model, x, y, name="fit inputs")
        if x.shape[0] < 2:
            raise UsageError(f"fit needs at least 2 clean inputs, got {x.shape[0]}")
        self._forget()
        self.model_ = model
        try:
            with model.attack_mode(), torch.no_grad():
                self._fit(model, x.detach(), y.to(x.device))
        except BaseException:
            self._forget()
            raise
        return self

    def _forget(self) -> None:
        for attr in [k for k in vars(self) if k.endswith("_") and not k.startswith("_")]:
            delattr(self, attr)

    def _batches(self, x: Tensor, *, bpda: bool) -> tuple[Tensor, Tensor]:
        model = self.model_
        grad = torch.is_grad_enabled() and x.requires_grad
        logits, scores = [], []
        with model.attack_mode(), torch.set_grad_enabled(grad):
            for i in range(0, x.shape[0], self.batch_size):
                z, s = self._logits_and_score(x[i : i + self.batch_size], bpda=bpda)
                logits.append(z)
                scores.append(s)
        if not scores:
            return x.new_zeros(0, model.n_classes), x.new_zeros(0)
        return torch.cat(logits), torch.cat(scores)

    def score(self, x: Tensor) -> Tensor:
        """Detector scores (N,), higher = more suspicious, for inputs (N, *input_shape).

        When ``x.requires_grad`` and gradients are enabled the scores are on the autograd graph
        (meaningful gradients only when ``differentiable``).
        """
        model = self._require_fitted("score")
        validate_inputs(model, x.detach(), name="score inputs")
        return self._batches(x, bpda=False)[1]

    def attack_forward(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """For adaptive attackers: the model's scores (N, n_classes), the detector score (N,) and the model's
        scores on *views* of ``x`` ([(N, n_classes)]), all on the autograd graph, from one computation.

        The forward values are exact; for a non-differentiable detector the backward pass is its BPDA
        approximation (Athalye et al. 2018), e.g. identity through feature squeezers. Views are
        transformed copies of the input whose predictions the detector compares with the model's
        (feature squeezing's squeezed inputs); an attacker that makes every view agree with its
        adversarial label defeats such a detector. Default: no views. Unbatched: pass one batch.
        """
        model = self._require_fitted("an adaptive attack")
        validate_inputs(model, x.detach(), name="attack inputs")
        with model.attack_mode():
            return self._attack_forward(x)

    def _attack_forward(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        z, s = self._logits_and_score(x, bpda=True)
        return z, s, []

    def calibrate(self, x_clean: Tensor, fpr: float = 0.05) -> float:
        """Set ``threshold_`` to the (1 - fpr) quantile of the scores of held-out clean inputs (N, ...).

        Returns the threshold. Also sets ``fpr_`` (the target) and ``scale_`` (the standard deviation
        of those clean scores; adaptive attacks measure distances to the threshold in its units).
        """
        model = self._require_fitted("calibrate")
        if isinstance(fpr, bool) or not isinstance(fpr, (int, float)) or not math.isfinite(fpr) or not 0 < fpr < 1:
            raise UsageError(
                f"fpr is the false-positive rate to allow on clean inputs, strictly between 0 and 1 "
                f"(e.g. 0.05), got {fpr!r}"
            )
        validate_inputs(model, x_clean, name="calibration inputs")
        need = math.ceil(1.0 / min(fpr, 1.0 - fpr))
        if x_clean.shape[0] < need:
            raise UsageError(
                f"calibrating at fpr={fpr:g} needs at least {need} held-out clean inputs, "
                f"got {x_clean.shape[0]}: pass more inputs or a larger fpr"
            )
        with torch.no_grad():
            s = self.score(x_clean).double()
        self.threshold_ = float(torch.quantile(s, 1.0 - float(fpr)))
        self.fpr_ = float(fpr)
        self.scale_ = max(float(s.std()), 1e-12)
        return self.threshold_

    @torch.no_grad()
    def detect(self, x: Tensor) -> Tensor:
        """(N,) bool: True where ``score(x) > threshold_`` (the input is flagged as adversarial)."""
        thr = self._require_calibrated("detect")
        return self.score(x) > thr


DETECTORS: Registry[type[Detector]] = Registry("detector")
"""Adversarial-input detectors by name (``"mahalanobis"``, ``"activations"``, ``"squeeze"``).
``register_detector(name)`` is the class decorator adding a detector (a taken name is refused unless
``replace=True``); ``get_detector('mahalanobis', ridge=1e-3)`` builds one."""

register_detector = DETECTORS.named
get_detector = DETECTORS.create
