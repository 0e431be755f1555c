"""Attack objectives on a batch of model scores, each returning a per-sample loss to *maximise*.

- ``ce``: cross-entropy with the true label (untargeted) or minus cross-entropy with the target.
- ``margin``: Carlini-Wagner margin, max_{j != y} z_j - z_y (untargeted) or z_t - max_{j != t} z_j.
- ``dlr``: difference of logits ratio (Croce & Hein 2020), scale-invariant; targeted variant
  -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2).

Scores that are probabilities are turned into log-probabilities first, so CE stays exact and
margin/DLR act on log-scores rather than saturated probabilities.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import UsageError

__all__ = ["LOSSES", "as_logits", "ce_loss", "dlr_loss", "get_loss", "margin_loss"]

LossFn = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


def as_logits(scores: Tensor, output: str) -> Tensor:
    """Log-probabilities when ``scores`` are probabilities, else the scores unchanged."""
    return scores.clamp_min(1e-12).log() if output == "probabilities" else scores


def ce_loss(z: Tensor, y: Tensor, targets: Tensor | None = None) -> Tensor:
    if targets is not None:
        return -F.cross_entropy(z, targets, reduction="none")
    return F.cross_entropy(z, y, reduction="none")


def _other_max(z: Tensor, label: Tensor) -> Tensor:
    return z.masked_fill(F.one_hot(label, z.shape[1]).bool(), float("-inf")).amax(dim=1)


def margin_loss(z: Tensor, y: Tensor, targets: Tensor | None = None) -> Tensor:
    if targets is not None:
        return z.gather(1, targets[:, None]).squeeze(1) - _other_max(z, targets)
    return _other_max(z, y) - z.gather(1, y[:, None]).squeeze(1)


def dlr_loss(z: Tensor, y: Tensor, targets: Tensor | None = None) -> Tensor:
    zs, _ = z.sort(dim=1)
    zy = z.gather(1, y[:, None]).squeeze(1)
    if targets is not None:
        if z.shape[1] < 4:
            raise UsageError("the targeted DLR loss needs at least 4 classes; use loss='ce' or 'margin'")
        zt = z.gather(1, targets[:, None]).squeeze(1)
        return -(zy - zt) / (zs[:, -1] - 0.5 * (zs[:, -3] + zs[:, -4]) + 1e-12)
    if z.shape[1] < 3:
        raise UsageError("the DLR loss needs at least 3 classes; use loss='ce' or 'margin'")
    top_is_y = zs[:, -1] == zy
    other = torch.where(top_is_y, zs[:, -2], zs[:, -1])
    return -(zy - other) / (zs[:, -1] - zs[:, -3] + 1e-12)


LOSSES: dict[str, LossFn] = {"ce": ce_loss, "margin": margin_loss, "dlr": dlr_loss}


def get_loss(name: str) -> LossFn:
    if name not in LOSSES:
        raise UsageError(f"unknown loss {name!r}: choose one of {', '.join(LOSSES)}")
    return LOSSES[name]
