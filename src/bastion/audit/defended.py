"""A defence in front of the audited model, set up the way ``bastion audit --detector`` does it.

The test split is what the audit attacks, so a detector never sees it: :func:`fit_detector` fits the
detector on one part of the *training* split and sets its threshold on another, disjoint part::

    det = bastion.audit.fit_detector(model, data, "activations", fpr=0.05)
    guarded = DetectingClassifier(model, det)          # bastion.defenses.detection
    report = bastion.audit.run_audit(guarded, data, "det-report/")   # the detection probe attacks both
"""

from __future__ import annotations

from ..data import Dataset
from ..defenses.detection import DETECTORS, Detector, get_detector
from ..errors import UsageError
from ..models.base import Classifier

__all__ = ["MIN_CALIBRATION", "fit_detector"]

MIN_CALIBRATION = 20
"""The fewest held-out training inputs a threshold is calibrated on."""


def fit_detector(
    model: Classifier,
    data: Dataset,
    detector: str | Detector = "mahalanobis",
    *,
    fpr: float = 0.05,
    n_calibrate: int = 1000,
    n_fit: int = 3000,
) -> Detector:
    """Fit an adversarial-input detector for ``model`` on ``data``'s training split and calibrate its threshold
    on held-out training inputs; return the fitted, calibrated detector.

    The first ``k = min(n_calibrate, N // 4)`` training inputs are held out for calibration (threshold at the
    ``1 - fpr`` quantile of their scores, :meth:`Detector.calibrate`); the detector is fitted on the next
    ``n_fit`` (inputs ``k .. k + n_fit``), with their labels. The test split is never used.

    Args:
        model: the Classifier the detector guards (white-box for the feature-based detectors).
        data: a :class:`~bastion.data.Dataset` with a training split of at least ``4 * MIN_CALIBRATION`` inputs.
        detector: a registered detector name (``"mahalanobis"``, ``"activations"``, ``"squeeze"``; see
            ``bastion.defenses.detection.DETECTORS``) or an unfitted :class:`Detector`.
        fpr: the false-positive rate on clean inputs the threshold is set to, in (0, 1).
        n_calibrate, n_fit: the most training inputs held out for calibration and used for fitting.

    Raises:
        UsageError: an unknown detector name, ``fpr`` outside (0, 1), or a training split too small.
    """
    if isinstance(detector, str):
        if detector not in DETECTORS:
            raise UsageError(f"unknown detector {detector!r}; choose one of {', '.join(DETECTORS)}")
        detector = get_detector(detector)
    elif not isinstance(detector, Detector):
        raise UsageError(f"detector must be a detector name or a Detector, got {type(detector).__name__}")
    if isinstance(fpr, bool) or not isinstance(fpr, (int, float)) or not 0 < fpr < 1:
        raise UsageError(f"fpr must lie in (0, 1), got {fpr!r}")
    for name, value in (("n_calibrate", n_calibrate), ("n_fit", n_fit)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{name} must be an integer >= 1, got {value!r}")
    n_train = int(data.x_train.shape[0])
    k = min(n_calibrate, n_train // 4)
    if k < MIN_CALIBRATION:
        raise UsageError(
            f"the training split of {data.name} ({n_train} inputs) is too small to fit and calibrate a detector: "
            f"it needs at least {4 * MIN_CALIBRATION} inputs"
        )
    detector.fit(model, data.x_train[k : k + n_fit], data.y_train[k : k + n_fit])
    detector.calibrate(data.x_train[:k], fpr=float(fpr))
    return detector
