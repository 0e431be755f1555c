"""What an output policy costs the honest client: :func:`utility_cost` on held-out probabilities.

The label must not change (``label_agreement`` 1.0: the policies keep it by construction); what the client loses
is calibration — the returned scores no longer say how likely each class is. Reported as the mean L1 distance
between returned and true probabilities, and, given the true labels, the change in expected calibration error
(Guo et al. 2017) and in negative log-likelihood.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ...errors import UsageError
from ...metrics import accuracy, expected_calibration_error
from .output import OutputPolicy, check_probabilities

__all__ = ["NLL_FLOOR", "utility_cost"]

NLL_FLOOR = 1e-12
"""Returned probabilities are floored at this value in the negative log-likelihood (top-k and label-only zero
classes out, whose log would be infinite): an input whose true class got 0 costs -log(1e-12) = 27.6 nats."""


def utility_cost(
    policy: OutputPolicy, probs: Tensor, labels: Tensor | None = None, x: Tensor | None = None
) -> dict[str, Any]:
    """The cost of ``policy`` on true probabilities ``probs`` (N, K) (``x`` (N, ...) the inputs, for a policy that
    needs them; ``labels`` (N,) the true classes, for the calibration metrics). Keys:

    - ``label_agreement``: share of rows whose returned ``argmax`` is the true ``argmax`` (the label);
    - ``label_on_top``: share whose label holds the largest returned value, ties allowed (rounding can tie);
    - ``l1``: mean L1 distance between returned and true rows; ``max_l1`` the largest;
    - with ``labels``: ``accuracy`` of the label, ``ece_before`` / ``ece_after`` / ``ece_change`` (15 bins, on
      the top returned value) and ``nll_before`` / ``nll_after`` / ``nll_change`` (mean over inputs, in nats, the
      returned probability of the true class floored at :data:`NLL_FLOOR`).
    """
    p = check_probabilities(probs).double()
    out = policy(probs, x).double()
    if out.shape != p.shape:
        raise UsageError(f"the policy returned shape {tuple(out.shape)} for probabilities of shape {tuple(p.shape)}")
    label = p.argmax(1)
    on_top = out.gather(1, label[:, None])[:, 0] >= out.max(1).values
    l1 = (out - p).abs().sum(1)
    n = p.shape[0]
    cost: dict[str, Any] = {
        "policy": repr(policy),
        "n": n,
        "label_agreement": accuracy(out.argmax(1), label),
        "label_on_top": float(on_top.double().mean()) if n else math.nan,
        "l1": float(l1.mean()) if n else math.nan,
        "max_l1": float(l1.max()) if n else math.nan,
    }
    if labels is None:
        return cost
    y = torch.as_tensor(labels).to(p.device).long()
    if y.shape != (n,):
        raise UsageError(f"labels must be (N,) = ({n},), one per row of probs, got {tuple(y.shape)}")
    correct = (label == y).cpu()
    ece_before = expected_calibration_error(p.max(1).values.cpu(), correct)
    ece_after = expected_calibration_error(out.max(1).values.clamp(0, 1).cpu(), correct)
    nll_before = _nll(p, y)
    nll_after = _nll(out, y)
    return cost | {
        "accuracy": accuracy(label.cpu(), y.cpu()),
        "ece_before": ece_before,
        "ece_after": ece_after,
        "ece_change": ece_after - ece_before,
        "nll_before": nll_before,
        "nll_after": nll_after,
        "nll_change": nll_after - nll_before,
    }


def _nll(probs: Tensor, y: Tensor) -> float:
    if not probs.shape[0]:
        return math.nan
    return float(-probs.gather(1, y[:, None]).clamp_min(NLL_FLOOR).log().mean())
