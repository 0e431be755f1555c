"""A classifier with a detector in front: predict a label, or refuse (``REJECT``) flagged inputs.

:class:`DetectingClassifier` is itself a :class:`~bastion.models.Classifier`, so the defended system
can be attacked end to end: ``logits`` are the inner model's scores (plain gradient attacks run on it
unchanged — they ignore the detector, which is the *non-adaptive* evaluation), ``predict`` returns
the label or ``REJECT = -1``, and :class:`~.adaptive.DetectorAwarePGD` attacks model and detector
together (the adaptive evaluation, Carlini & Wagner 2017).

Scoring convention (used by the adaptive attack and the audit's detection probe):

- a clean input that is rejected counts as **not correct** (the system gave no right answer — the
  cost of the detector's false positives);
- an adversarial input that is rejected counts as a **failed attack**: an attack on the combination
  succeeds only if the model misclassifies the input *and* the detector lets it through
  (:meth:`DetectingClassifier.attack_success`).

Generic attacks (``bastion.attacks``) judge success by ``predict(x_adv) != y`` and so count a
``REJECT`` as a success: measure them on the combination with :meth:`DetectingClassifier.attack_success`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...errors import UsageError
from ...models.base import Classifier, validate_inputs
from ...models.wrapped import WrappedClassifier
from .base import Detector

__all__ = ["REJECT", "DetectingClassifier"]

REJECT = -1


class DetectingClassifier(WrappedClassifier):
    """``model`` behind ``detector``: the model's label, or ``REJECT`` (-1) where the detector fires.

    Args:
        model: the classifier the detector was fitted on (the same object).
        detector: a fitted and calibrated :class:`~.base.Detector`.

    Same ``n_classes``, ``input_shape``, ``bounds``, ``output`` and ``white_box`` as ``model``.
    ``n_queries`` counts the inputs sent to the defended system (``logits``, ``predict``, ``reject``
    and adaptive attacks each count one per input); the inner model keeps its own count.
    """

    def __init__(self, model: Classifier, detector: Detector) -> None:
        super().__init__(model)
        if not isinstance(detector, Detector):
            raise UsageError(f"detector must be a bastion Detector (see DETECTORS), got {type(detector).__name__}")
        detector._require_calibrated("wrapping it in a DetectingClassifier")
        if detector.model_ is not model:
            raise UsageError(
                "the detector was fitted on another model: fit it on this one "
                "(detector.fit(model, x_train, y_train)) and calibrate it again"
            )
        self.detector = detector

    @property
    def model(self) -> Classifier:
        """The classifier behind the detector (the same as :attr:`wrapped`)."""
        return self.wrapped

    @torch.no_grad()
    def reject(self, x: Tensor) -> Tensor:
        """(N,) bool: True where the detector flags the input (``score > threshold``)."""
        validate_inputs(self, x)
        self.n_queries += int(x.shape[0])
        return self.detector.detect(x)

    @torch.no_grad()
    def predict(self, x: Tensor, batch_size: int | None = None) -> Tensor:
        """Labels (N,) int64: the model's label, or ``REJECT`` (-1) where the detector fires.

        Labels and detector scores come from the same forward pass, batched by the detector's
        ``batch_size`` (``batch_size`` here is accepted for interface compatibility and ignored), so
        ``predict(x) == REJECT`` exactly where ``detector.detect(x)``.
        """
        validate_inputs(self, x)
        self.n_queries += int(x.shape[0])
        z, s = self.detector._batches(x, bpda=False)
        labels = z.argmax(dim=1)
        return torch.where(s > self.detector.threshold_, torch.full_like(labels, REJECT), labels)

    @torch.no_grad()
    def attack_success(self, x_adv: Tensor, y: Tensor, targets: Tensor | None = None) -> Tensor:
        """(N,) bool: the model is fooled (label != ``y``, or == ``targets``) and the detector does not fire."""
        validate_inputs(self, x_adv, y, name="x_adv")
        pred = self.predict(x_adv)
        fooled = pred == targets.to(pred.device) if targets is not None else pred != y.to(pred.device)
        return fooled & (pred != REJECT)

    def __repr__(self) -> str:
        return (
            f"DetectingClassifier({self.model!r}, {self.detector!r}, threshold={self.detector.threshold_:.6g}, "
            f"fpr={self.detector.fpr_:g})"
        )
