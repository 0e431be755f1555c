"""Model inversion: reconstruct a representative input of a class from the model alone (MI-FACE).

Fredrikson, Jha & Ristenpart 2015, "Model Inversion Attacks that Exploit Confidence Information and Basic
Countermeasures" (CCS), Algorithm 1: gradient descent on the input to minimise ``c(x) = 1 - f_c(x)`` (the model's
probability of class ``c``), each step followed by ``PROCESS`` — the paper denoises and sharpens the face image;
here a smoothness prior of the same purpose, a few steps of total-variation smoothing, then a clip to the bounds
— stopping after ``steps`` iterations, when ``c(x)`` has not improved for ``patience`` steps, or when it falls
below ``gamma``. The start is the all-``start_value`` image (the paper starts from zeros).

``gradients="scores"`` is the black-box variant: the gradient of ``c`` is estimated from scores only by
antithetic Gaussian sampling (Ilyas et al. 2018's NES), ``samples`` queries per step, so any Classifier works.

A reconstruction is judged by an *independent* classifier (another architecture, trained on data the target did
not see) recognising its class — :func:`recognition_rate` — and by its distance to the nearest training image of
that class (:func:`nearest_distances`): an inversion that only found an adversarial pattern fools the target but
not the evaluator.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

from ...errors import UsageError
from ...models.base import Classifier

__all__ = ["InversionResult", "MIFace", "nearest_distances", "recognition_rate"]


def _tv_smooth(x: Tensor, weight: float, iterations: int) -> Tensor:
    """A few gradient steps on the (anisotropic, smoothed) total variation of images (N, C, H, W)."""
    for _ in range(iterations):
        z = x.detach().requires_grad_(True)
        tv = (z[:, :, 1:, :] - z[:, :, :-1, :]).pow(2).add(1e-8).sqrt().sum() + (
            (z[:, :, :, 1:] - z[:, :, :, :-1]).pow(2).add(1e-8).sqrt().sum()
        )
        (g,) = torch.autograd.grad(tv, z)
        x = (z - weight * g).detach()
    return x


@dataclass
class InversionResult:
    """Reconstructions (K, *input_shape), one per requested class, with the target's confidence in each."""

    classes: list[int]
    images: Tensor
    confidence: list[float]
    steps: list[int]
    queries: int
    seconds: float
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True, eq=False, repr=False)
class MIFace:
    """MI-FACE (Fredrikson et al. 2015).

    Defaults differ from the paper's face setting where a measurement on ``digits-mlp`` said so (docs/benchmarks.md):
    the cost is ``-log f_c(x)`` (``loss="log-probability"``; the paper's ``1 - f_c(x)`` saturates once the model is
    sure, so the image stops moving towards the class), with no early stop at a cost threshold, and the
    smoothness prior is off (on 8x8 digits total-variation smoothing blurred the strokes away: 2-5 of 10
    reconstructions recognised with it, 8-9 without).

    Args:
        steps: at most this many iterations (the paper's alpha). step_size: the gradient step (lambda).
        patience: stop when the cost has not improved for this many steps (beta). gamma: stop below this cost.
        tv_weight, tv_iterations: the smoothness prior's strength and steps per PROCESS (0: no prior).
        start_value: the starting image's value (default: the bounds' low end, the paper's zeros).
        gradients: ``"model"`` (white-box) or ``"scores"`` (estimated from scores, black-box).
        samples, sigma: the score-based estimate's queries per step and its sampling scale (input units).
        seed: the score-based estimate's seed.
        loss: ``"log-probability"`` (``-log f_c``) or ``"probability"`` (the paper's ``1 - f_c``).
    """

    steps: int = 1000
    step_size: float = 0.3
    patience: int = 100
    gamma: float = 0.0
    tv_weight: float = 0.0
    tv_iterations: int = 2
    start_value: float | None = None
    gradients: str = "model"
    samples: int = 50
    sigma: float = 0.01
    seed: int = 0
    loss: str = "log-probability"

    def __post_init__(self) -> None:
        if self.loss not in ("probability", "log-probability"):
            raise UsageError(
                f"loss must be 'probability' (the paper's 1 - f_c) or 'log-probability', got {self.loss!r}"
            )
        if self.gradients not in ("model", "scores"):
            raise UsageError(f"gradients must be 'model' or 'scores', got {self.gradients!r}")
        for name in ("steps", "patience", "samples"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UsageError(f"{name} must be a whole number >= 1, got {v!r}")
        if not self.step_size > 0 or not self.sigma > 0:
            raise UsageError("step_size and sigma must be > 0")

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def _cost(self, model: Classifier, x: Tensor, cls: Tensor) -> Tensor:
        z = model.logits(x)
        logp = z.clamp_min(1e-30).log() if model.output == "probabilities" else torch.log_softmax(z, dim=1)
        lp = logp.gather(1, cls.view(-1, 1)).squeeze(1)
        return -lp if self.loss == "log-probability" else 1.0 - lp.exp()

    def _grad(self, model: Classifier, x: Tensor, cls: Tensor, g: torch.Generator) -> Tensor:
        if self.gradients == "model":
            z = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self._cost(model, z, cls).sum(), z)
            return grad
        n, half = x.shape[0], self.samples // 2 or 1
        u = torch.randn((half, *x.shape), generator=g).to(x)
        with torch.no_grad():
            plus = self._cost(model, (x.unsqueeze(0) + self.sigma * u).flatten(0, 1), cls.repeat(half))
            minus = self._cost(model, (x.unsqueeze(0) - self.sigma * u).flatten(0, 1), cls.repeat(half))
        diff = (plus - minus).view(half, n, *([1] * (x.dim() - 1)))
        return (diff * u).mean(dim=0) / (2 * self.sigma)

    def invert(self, model: Classifier, classes: Sequence[int] | None = None) -> InversionResult:
        """Reconstruct one input per class of ``model`` (all classes by default), all classes in one batch."""
        if self.gradients == "model" and not model.white_box:
            raise UsageError(
                f"{type(model).__name__} is a black-box model: white-box inversion needs gradients; use "
                "gradients='scores' (estimated from its scores)"
            )
        if len(model.input_shape) != 3 and self.tv_iterations > 0 and self.tv_weight > 0:
            raise UsageError("the smoothness prior is for images (C, H, W): set tv_weight=0 for other inputs")
        chosen = list(range(model.n_classes)) if classes is None else [int(c) for c in classes]
        if not chosen or any(not 0 <= c < model.n_classes for c in chosen):
            raise UsageError(f"classes must lie in [0, {model.n_classes - 1}], got {classes!r}")
        lo, hi = model.bounds
        start = time.perf_counter()
        q0 = model.n_queries
        cls = torch.tensor(chosen)
        x = torch.full((len(chosen), *model.input_shape), lo if self.start_value is None else float(self.start_value))
        g = torch.Generator().manual_seed(int(self.seed))
        with model.attack_mode():
            best, best_cost, steps = self._descend(model, x, cls, g, (lo, hi))
        return InversionResult(
            chosen, best, best_cost.tolist(), steps, model.n_queries - q0, time.perf_counter() - start, self.params()
        )

    def _descend(
        self, model: Classifier, x: Tensor, cls: Tensor, g: torch.Generator, bounds: tuple[float, float]
    ) -> tuple[Tensor, Tensor, list[int]]:
        with torch.no_grad():
            cost = self._cost(model, x, cls)
        best, best_cost = x.clone(), cost.clone()
        since = torch.zeros(len(cls), dtype=torch.long)
        active = torch.ones(len(cls), dtype=torch.bool)
        steps = [0] * len(cls)
        for step in range(1, self.steps + 1):
            grad = self._grad(model, x, cls, g)
            x = torch.where(
                active.view(-1, *([1] * (x.dim() - 1))), self._process(x - self.step_size * grad, bounds), x
            )
            with torch.no_grad():
                cost = self._cost(model, x, cls)
            better = (cost < best_cost) & active
            best[better], best_cost[better] = x[better], cost[better]
            since = torch.where(better, torch.zeros_like(since), since + 1)
            for i in torch.nonzero(active).flatten().tolist():
                steps[i] = step
            active &= (since < self.patience) & (best_cost > self.gamma)
            if not bool(active.any()):
                break
        return best, best_cost, steps

    def _process(self, x: Tensor, bounds: tuple[float, float]) -> Tensor:
        if x.dim() == 4 and self.tv_iterations > 0 and self.tv_weight > 0:
            x = _tv_smooth(x, self.tv_weight, self.tv_iterations)
        return x.clamp(*bounds)


@torch.no_grad()
def recognition_rate(evaluator: Callable[[Tensor], Tensor], result: InversionResult) -> tuple[float, list[int]]:
    """Share of reconstructions the independent ``evaluator`` (inputs -> labels) assigns to their class, and its
    labels."""
    pred = evaluator(result.images).tolist()
    hits = sum(int(p == c) for p, c in zip(pred, result.classes))
    return hits / len(result.classes), [int(p) for p in pred]


def nearest_distances(result: InversionResult, x_train: Tensor, y_train: Tensor) -> list[float]:
    """For each reconstruction, the L2 distance to the nearest training image of its class (per value: divided by
    the square root of the input size, so images of any size compare)."""
    out = []
    d = float(x_train[0].numel()) ** 0.5
    for img, c in zip(result.images, result.classes):
        pool = x_train[y_train == c].flatten(1)
        out.append(float((pool - img.flatten()).norm(dim=1).min()) / d if pool.numel() else float("nan"))
    return out
