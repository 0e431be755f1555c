"""Label-only membership inference (Choquette-Choo, Tramèr, Carlini & Papernot 2021, "Label-Only Membership
Inference Attacks", ICML): the attacker sees only predicted labels.

A model is more robust around its training points than around unseen ones, so a member stays correctly
classified under more small changes. The score is the share of ``n_queries`` perturbed copies of the record the
model still labels correctly: translations by up to ``max_shift`` pixels (the paper's data augmentation attack,
every shift in the square, identity first), or Gaussian noise of standard deviation ``sigma`` times the input
range (the paper's noise-robustness attack), drawn from ``seed``. ``perturbation="auto"`` shifts images of at
least 16 pixels a side and adds noise to everything else: on 8x8 digits a one-pixel shift moves an eighth of the
image and members and non-members fail alike (measured on an overfit digits-mlp: AUC 0.500 with shifts, 0.55 with
noise). Only
``model.predict`` is called — a label-only endpoint is enough — and every copy is one counted query.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ....errors import UsageError
from ....models.base import Classifier, validate_inputs
from .base import MembershipAttack, register_membership

__all__ = ["LabelOnlyAttack", "shifted_copies"]


def shifted_copies(x: Tensor, max_shift: int) -> list[Tensor]:
    """Every translation of images ``x`` (N, C, H, W) by (dy, dx) in [-max_shift, max_shift]^2, identity first;
    vacated pixels take the image's minimum (the background of MNIST-like data)."""
    shifts = [(0, 0)] + [
        (dy, dx)
        for dy in range(-max_shift, max_shift + 1)
        for dx in range(-max_shift, max_shift + 1)
        if (dy, dx) != (0, 0)
    ]
    fill = x.amin(dim=(1, 2, 3), keepdim=True)
    out = []
    h, w = x.shape[2], x.shape[3]
    for dy, dx in shifts:
        moved = fill.expand_as(x).clone()
        ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
        xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
        moved[:, :, yd, xd] = x[:, :, ys, xs]
        out.append(moved)
    return out


@register_membership("label-only")
@dataclass(kw_only=True, eq=False, repr=False)
class LabelOnlyAttack(MembershipAttack):
    """Choquette-Choo et al. 2021's augmentation / noise-robustness attack from predicted labels only.

    Args:
        perturbation: ``"shift"``, ``"noise"`` or ``"auto"`` (shifts for images of at least 16 pixels a side).
        max_shift: shifts: translations up to this many pixels ((2 max_shift + 1)^2 copies).
        n_noise: noise: noisy copies per record (plus the record itself).
        sigma: noise: the standard deviation as a share of the input range.
        seed: the noise's seed.
    """

    needs_model: ClassVar[bool] = True

    perturbation: str = "auto"
    max_shift: int = 1
    n_noise: int = 20
    sigma: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.perturbation not in ("auto", "shift", "noise"):
            raise UsageError(f"perturbation must be 'auto', 'shift' or 'noise', got {self.perturbation!r}")
        if isinstance(self.max_shift, bool) or not isinstance(self.max_shift, int) or self.max_shift < 1:
            raise UsageError(f"max_shift must be a whole number >= 1, got {self.max_shift!r}")
        if isinstance(self.n_noise, bool) or not isinstance(self.n_noise, int) or self.n_noise < 1:
            raise UsageError(f"n_noise must be a whole number >= 1, got {self.n_noise!r}")
        if not float(self.sigma) > 0:
            raise UsageError(f"sigma must be > 0, got {self.sigma!r}")

    def _copies(self, model: Classifier, x: Tensor) -> list[Tensor]:
        shift = self.perturbation == "shift" or (
            self.perturbation == "auto" and x.dim() == 4 and min(x.shape[2], x.shape[3]) >= 16
        )
        if shift:
            if x.dim() != 4:
                raise UsageError(f"perturbation='shift' needs images (N, C, H, W), got shape {tuple(x.shape)}")
            return shifted_copies(x, self.max_shift)
        lo, hi = model.bounds
        g = torch.Generator().manual_seed(int(self.seed))
        noise = [torch.randn(x.shape, generator=g) * float(self.sigma) * (hi - lo) for _ in range(self.n_noise)]
        return [x] + [(x + e.to(x.device, x.dtype)).clamp(lo, hi) for e in noise]

    @torch.no_grad()
    def score(self, model: Classifier, x: Tensor, y: Tensor, *, indices: Tensor | None = None) -> Tensor:
        validate_inputs(model, x, y)
        correct = torch.zeros(x.shape[0], dtype=torch.float64)
        copies = self._copies(model, x)
        with model.attack_mode():
            for copy in copies:
                pred = torch.cat(
                    [model.predict(copy[i : i + self.batch_size]) for i in range(0, x.shape[0], self.batch_size)]
                )
                correct += (pred.cpu() == y.cpu()).double()
        return correct / len(copies)

    def score_from(self, scores: Tensor, y: Tensor, *, output: str = "logits", indices: Tensor | None = None) -> Tensor:
        raise UsageError("the label-only attack queries the model on perturbed copies: call score(model, x, y)")
