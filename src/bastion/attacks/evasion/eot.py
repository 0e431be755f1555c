"""Expectation over Transformation (Athalye et al. 2018, "Synthesizing Robust Adversarial Examples";
"Obfuscated Gradients Give a False Sense of Security", section 4.3).

A randomised defence (noise injection, random resizing, dropout at test time, ...) makes a single
gradient a noisy, often useless estimate. :class:`EOT` wraps such a model as a
:class:`~bastion.models.Classifier` whose scores are the mean over ``n_samples`` random draws,

    logits(x) = 1/n * sum_i model(t_i(x)),   t_i ~ transform (or the model's own randomness),

so the gradient of any loss on it is the gradient of the expected scores and any white-box attack
attacks the expectation: ``PGD(eps=0.3)(EOT(model, n_samples=8), x, y)``.

Inputs (N, *input_shape) -> scores (N, n_classes). When the inner model outputs probabilities the
probabilities are averaged (the wrapper outputs probabilities); otherwise logits are averaged
(the wrapper outputs logits). The draws are separate calls to the inner model, so randomness drawn
once per call (one noise tensor or one resize per batch) is resampled for every draw.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ...errors import UsageError
from ...models.base import Classifier
from ...models.wrapped import WrappedClassifier

__all__ = ["EOT"]

Transform = Callable[[Tensor, torch.Generator], Tensor]


class EOT(WrappedClassifier):
    """Average a randomised model's scores over ``n_samples`` draws.

    Args:
        model: the classifier to wrap; it is not modified (``attack_mode`` delegates to it).
        n_samples: draws per call (10 by default).
        transform: optional random transformation ``transform(x, generator) -> x'`` applied before
            the model, drawing its randomness from ``generator`` only; it must keep the shape and be
            differentiable for gradient attacks. ``None``: the model's own randomness is used.
        generator: the generator passed to ``transform``; ``None`` makes one from ``seed``.
        seed: seed of that generator (``None``: nondeterministic).

    ``n_queries`` counts the forward samples through the inner model (``n_samples`` per input). The
    wrapped model is :attr:`wrapped` (also ``model``).
    """

    scores_are_expectation = True  # the audit does not wrap it again

    def __init__(
        self,
        model: Classifier,
        *,
        n_samples: int = 10,
        transform: Transform | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = 0,
    ) -> None:
        super().__init__(model)
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise UsageError(f"n_samples must be an integer >= 1, got {n_samples!r}")
        if transform is not None and not callable(transform):
            raise UsageError(f"transform must be a callable (x, generator) -> x, got {type(transform).__name__}")
        self.n_samples = n_samples
        self.transform = transform
        self.generator = generator
        self.seed = seed
        self._gen: torch.Generator | None = None

    def _generator(self, device: torch.device) -> torch.Generator:
        if self.generator is not None:
            return self.generator
        if self._gen is None or self._gen.device != device:
            self._gen = torch.Generator(device=device)
            if self.seed is None:
                self._gen.seed()
            else:
                self._gen.manual_seed(int(self.seed))
        return self._gen

    @property
    def queries_per_input(self) -> int:
        """``n_samples``: :meth:`logits` counts one query per draw."""
        return self.n_samples

    def _scores(self, x: Tensor) -> Tensor:
        """Mean scores (N, n_classes) over ``n_samples`` draws."""
        total: Tensor | None = None
        for _ in range(self.n_samples):
            xt = self.transform(x, self._generator(x.device)) if self.transform is not None else x
            s = self.wrapped.logits(xt)
            total = s if total is None else total + s
        if total is None:  # pragma: no cover - n_samples >= 1
            raise RuntimeError("EOT drew no samples")
        return total / self.n_samples

    @property
    def model(self) -> Classifier:
        """The wrapped classifier (the same as :attr:`wrapped`)."""
        return self.wrapped

    def __repr__(self) -> str:
        return f"EOT({self.wrapped!r}, n_samples={self.n_samples}, transform={self.transform!r}, seed={self.seed!r})"
