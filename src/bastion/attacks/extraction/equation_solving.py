"""Equation-solving extraction of logistic models (Tramèr, Zhang, Juels, Reiter & Ristenpart 2016, "Stealing
Machine Learning Models via Prediction APIs", USENIX Security, section 4.1.1).

Threat model: a black-box victim that answers with class **probabilities** (confidence scores) of logistic form:
binary ``p_1(x) = sigmoid(w . x + b)`` or multinomial ``p_k(x) = softmax(W x + b)_k``. Then

    log p_k(x) - log p_r(x) = (w_k - w_r) . x + (b_k - b_r)        for every class k and a reference r,

is affine in ``x`` (binary: the log-odds ``logit(p_1)``). Each query gives K - 1 such equations, one per class,
in the same d + 1 unknowns per class, so **d + 1 queries at linearly independent points recover every class**
(d = the number of input features) by one linear solve — ``torch.linalg.lstsq`` in float64 on the inputs exactly
as sent. Standardisation or any other affine preprocessing inside the victim changes nothing: what is recovered is
the composed affine map from the raw input to the log-odds.

Identifiability: the softmax is unchanged when the same vector is added to every class's parameters, so only the
differences are determined; the copy's parameters are normalised relative to class 0 (``w_0 = 0, b_0 = 0``) and
compare to the closed form after the same normalisation (:meth:`~bastion.models.linear.LogisticModel.affine`).
A binary model's single unit is ``w_1 - w_0``. The copy (:class:`~bastion.models.linear.LogisticModel`)
returns the victim's probabilities up to the victim's own rounding: fidelity 1.

Queries (``design``): ``"basis"`` (default) — a base point (default the lower bound) and one step of ``step`` times
the bounds' width along each input axis, the best-conditioned d + 1 points, and close enough together that no
probability underflows (a logistic model's log-odds are affine, so the size of the region does not matter to the
algebra, only to float rounding); ``"random"`` — d + 1 points uniform in the bounds, as in the paper (fine for
models with small coefficients; a model whose probabilities underflow in float32 cannot be solved from those
answers, and the attack says so). The reference class is the one whose smallest answered probability
is largest. A label-only victim is refused: labels give no equations (use Knockoff Nets with ``labels_only=True``
or Jacobian augmentation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ...errors import UsageError
from ...models.base import Classifier
from ...models.linear import LogisticModel
from ...models.torch import TorchClassifier
from .base import Evaluation, ExtractionAttack, is_label_only, register_extraction

__all__ = ["EquationSolving", "logistic_arch"]

_TINY = 1e-37  # float32's smallest normal number is 1.2e-38: below it a probability has lost its digits


def logistic_arch(input_shape: tuple[int, ...], n_classes: int) -> str | None:
    """The registered architecture that is a :class:`LogisticModel` of this input shape and classes, if any (what a
    copy is saved as)."""
    from ...models.architectures import ARCHITECTURES

    for name, arch in ARCHITECTURES.items():
        if arch.input_shape == tuple(input_shape) and arch.n_classes == n_classes:
            if isinstance(arch.build(), LogisticModel):
                return name
    return None


@register_extraction("equation-solving")
@dataclass(kw_only=True, eq=False, repr=False)
class EquationSolving(ExtractionAttack):
    """Recover a logistic victim's parameters exactly from d + 1 probability answers (Tramèr et al. 2016).

    Args:
        design: ``"basis"`` (a base point and one step along each axis) or ``"random"`` (uniform in the bounds).
        step: ``"basis"``: the step along each axis, as a share of the bounds' width, in (0, 1].
        base: ``"basis"``: the point stepped from, one input (*input_shape) inside the bounds; default the lower
            bound (steps go inward from it).
        seed, generator: the random design's draws.

    Uses exactly d + 1 queries (d = prod(input_shape)) whatever the budget; a budget below d + 1 is refused.
    """

    needs_probabilities: ClassVar[bool] = True
    takes_checkpoints: ClassVar[bool] = False

    design: str = "basis"
    step: float = 0.1
    base: Tensor | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.design not in ("basis", "random"):
            raise UsageError(f"design must be 'basis' or 'random', got {self.design!r}")
        ok = isinstance(self.step, (int, float)) and not isinstance(self.step, bool) and math.isfinite(self.step)
        if not ok or not 0 < self.step <= 1:
            raise UsageError(f"step must be a share of the bounds' width in (0, 1], got {self.step!r}")
        if self.base is not None and not isinstance(self.base, Tensor):
            raise UsageError(f"base must be a tensor of one input's shape, got {type(self.base).__name__}")

    def min_budget(self, model: Classifier) -> int:
        return math.prod(model.input_shape) + 1

    def _queries(self, model: Classifier, generator: torch.Generator) -> Tensor:
        """The d + 1 inputs (d + 1, d) float32 to ask about."""
        d, (lo, hi) = math.prod(model.input_shape), model.bounds
        if self.design == "random":
            return lo + (hi - lo) * torch.rand(d + 1, d, generator=generator)
        base = torch.full((d,), lo) if self.base is None else self.base.detach().float().cpu().reshape(-1)
        if base.numel() != d:
            raise UsageError(f"base has {base.numel()} values but one input has {d} ({tuple(model.input_shape)})")
        if float(base.min()) < lo or float(base.max()) > hi:
            raise UsageError(f"base must lie inside the bounds [{lo:g}, {hi:g}]")
        h = self.step * (hi - lo)
        steps = torch.where(base + h <= hi, h, -h)  # inward from either bound
        return torch.cat([base[None], base + torch.diag(steps)]).float()

    def _extract(
        self, model: Classifier, budget: int, checkpoints: list[int], evaluation: Evaluation, generator: torch.Generator
    ) -> tuple[TorchClassifier, dict[str, Any]]:
        shape, k = tuple(model.input_shape), model.n_classes
        x = self._queries(model, generator)
        with torch.no_grad():
            scores = model.logits(x.reshape(-1, *shape)).detach().double().cpu()
        if is_label_only(model) or bool(((scores == 0) | (scores == 1)).all()):
            raise UsageError(
                f"{self.name} needs the victim's probabilities but its answers are labels (one-hot) only: "
                "use knockoff with labels_only=True (bastion steal --attack knockoff --labels-only) or jacobian"
            )
        logp = torch.log_softmax(scores, 1) if model.output == "logits" else scores.clamp_min(0).log()
        saturated = int((logp < math.log(_TINY)).sum())
        if saturated:
            raise UsageError(
                f"{saturated} of the victim's {logp.numel()} answered probabilities underflowed (below {_TINY:g}): "
                "they give no equations; ask closer to the data (design='basis', a smaller step, or a base point)"
            )
        ref = int(logp.min(0).values.argmax())
        targets = logp - logp[:, ref : ref + 1]  # (d + 1, K); column ref is 0
        design = torch.cat([x.double(), torch.ones(x.shape[0], 1, dtype=torch.float64)], dim=1)
        theta = torch.linalg.lstsq(design, targets).solution  # (d + 1, K): w_k - w_ref, then b_k - b_ref
        theta = theta - theta[:, :1]  # relative to class 0
        weight, bias = theta[:-1].T, theta[-1]
        if k == 2:
            weight, bias = weight[1:], bias[1:]
        module = LogisticModel(shape, k).set_affine(weight, bias).eval()
        for p in module.parameters():
            p.requires_grad_(False)
        stolen = TorchClassifier(module, bounds=model.bounds, n_classes=k, input_shape=shape, output="probabilities")
        stolen.arch = logistic_arch(shape, k)
        evaluation.point(stolen, x.shape[0])
        return stolen, {"design": self.design, "reference_class": ref}
