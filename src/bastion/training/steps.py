"""Per-batch transforms of the one training loop, registered by name in :data:`TRAINING_STEPS`.

A step receives the module, the batch (:class:`Batch`: inputs, labels and their positions in the training
set), the run's generator and the epoch, and returns what to train on: a ``(x, y)`` pair (the trainer applies
its loss, cross-entropy by default) or the loss itself (a scalar tensor). Adversarial training, Gaussian noise
and, next, poisoned batches are steps; DP-SGD swaps the optimizer and a federated client runs its local epochs,
both on the unchanged loop (:class:`bastion.training.Trainer`).

- ``"clean"`` (:class:`CleanStep`): the batch as it is.
- ``"gaussian"`` (:class:`GaussianNoise`): ``x + N(0, sigma^2 I)``, fresh noise per batch from the run's
  generator (Lecuyer et al. 2019; Cohen, Rosenfeld & Kolter 2019, section 4).
- ``"pgd-at"``, ``"trades"``, ``"fast-at"``: adversarial training, registered by
  :mod:`bastion.defenses.training` (importing :mod:`bastion` registers them).

    >>> sorted(set(TRAINING_STEPS) & {"clean", "gaussian"})
    ['clean', 'gaussian']
    >>> make_step("gaussian", sigma=0.25)
    GaussianNoise(sigma=0.25)
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..errors import UsageError
from ..registry import Registry

__all__ = ["TRAINING_STEPS", "Batch", "CleanStep", "GaussianNoise", "StepOutput", "TrainingStep", "make_step"]


@dataclass(frozen=True)
class Batch:
    """One batch of the training loop: inputs ``x`` (B, *input_shape), labels ``y`` (B,) and ``index`` (B,), their
    positions in the training tensors given to :meth:`Trainer.fit` (for steps that keep per-example state)."""

    x: Tensor
    y: Tensor
    index: Tensor


StepOutput = Tensor | tuple[Tensor, Tensor] | Batch


class TrainingStep:
    """Base class of the per-batch transforms; the default trains on the batch unchanged.

    Override ``__call__`` (and, where a step keeps state across batches, the other hooks): ``setup`` runs once at
    the start of :meth:`Trainer.fit` on the training tensors (before a checkpoint is resumed), ``start_epoch``
    before each epoch's batches, ``describe`` adds values to each epoch's record entry (e.g. the epoch's eps),
    and ``state_dict`` / ``load_state_dict`` carry the step's state (tensors and plain values) through
    checkpoints.
    """

    name: ClassVar[str] = "custom"

    def setup(self, x: Tensor, y: Tensor, generator: torch.Generator) -> None:
        """Called once per fit with the whole training split."""

    def start_epoch(self, epoch: int) -> None:
        """Called before the batches of ``epoch`` (0-based)."""

    def __call__(self, module: nn.Module, batch: Batch, generator: torch.Generator, epoch: int) -> StepOutput:
        return batch.x, batch.y

    def describe(self) -> dict[str, Any]:
        """Values recorded in the current epoch's entry."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def __repr__(self) -> str:
        params = [p for p in inspect.signature(type(self).__init__).parameters.values() if p.name != "self"]
        shown = ", ".join(f"{p.name}={getattr(self, p.name)!r}" for p in params if hasattr(self, p.name))
        return f"{type(self).__name__}({shown})"


class FunctionStep(TrainingStep):
    """A plain function ``fn(module, batch, generator, epoch) -> (x, y) | loss`` used as a step."""

    def __init__(self, fn: Callable[[nn.Module, Batch, torch.Generator, int], StepOutput]) -> None:
        self.fn = fn

    def __call__(self, module: nn.Module, batch: Batch, generator: torch.Generator, epoch: int) -> StepOutput:
        return self.fn(module, batch, generator, epoch)

    def __repr__(self) -> str:
        return f"FunctionStep({getattr(self.fn, '__qualname__', type(self.fn).__name__)})"


TRAINING_STEPS: Registry[type[TrainingStep]] = Registry("training step")


@TRAINING_STEPS.register("clean")
class CleanStep(TrainingStep):
    """Standard training: the loss of the batch as it is."""

    name = "clean"

    def __init__(self) -> None:
        pass


@TRAINING_STEPS.register("gaussian")
class GaussianNoise(TrainingStep):
    """Gaussian data augmentation: train on ``x + sigma * N(0, I)``, fresh noise per batch (not clipped to the
    bounds, as in Cohen et al.), drawn from the run's generator. The base model randomized smoothing needs.

    Args:
        sigma: noise standard deviation in input units (the sigma the smoothed classifier will use), > 0.
    """

    name = "gaussian"

    def __init__(self, *, sigma: float) -> None:
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
            raise UsageError(f"sigma must be a finite number > 0 (the smoothing noise level, e.g. 0.25), got {sigma!r}")
        self.sigma = sigma

    def __call__(self, module: nn.Module, batch: Batch, generator: torch.Generator, epoch: int) -> StepOutput:
        x = batch.x
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x + float(self.sigma) * noise, batch.y


def make_step(step: str | TrainingStep | Callable[..., StepOutput], **options: Any) -> TrainingStep:
    """A step from a registered name (built with ``options``), a :class:`TrainingStep`, or a plain function."""
    if isinstance(step, TrainingStep):
        if options:
            raise UsageError("options are for a step given by name; a TrainingStep instance is already configured")
        return step
    if isinstance(step, str):
        cls = TRAINING_STEPS.get(step)
        try:
            inspect.signature(cls).bind(**options)
        except TypeError as exc:
            raise UsageError(f"training step {step!r}: {exc}; its parameters: {inspect.signature(cls)}") from None
        return cls(**options)
    if callable(step):
        return FunctionStep(step)
    raise UsageError(f"step must be a registered name, a TrainingStep or a function, got {type(step).__name__}")
