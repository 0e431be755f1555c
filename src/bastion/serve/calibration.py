"""Fitting the guard's run-time backdoor signal on the operator's reference data (``[backdoor]``: STRIP)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..errors import UsageError
from .config import BackdoorConfig

__all__ = ["fit_backdoor"]


def fit_backdoor(cfg: BackdoorConfig, model: Any, reference: Any, x_cal: Tensor, seed: int) -> Any:
    """STRIP with up to 2,000 of the reference's training inputs as its clean overlays, calibrated on ``x_cal``;
    None when ``[backdoor]`` is off."""
    if not cfg.enabled:
        return None
    from ..defenses.detection import get_detector

    g = torch.Generator().manual_seed(seed)
    pool = torch.randperm(int(reference.x_train.shape[0]), generator=g)[:2000]
    det = get_detector(cfg.detector, n_perturb=cfg.n_perturb, seed=seed)
    try:
        det.fit(model, reference.x_train[pool], reference.y_train[pool])
        det.calibrate(x_cal, fpr=cfg.fpr)
    except UsageError as exc:
        raise UsageError(f"[backdoor] {exc}") from None
    return det
