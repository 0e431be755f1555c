"""What adversarial training watches after every epoch: held-out clean and PGD accuracy
(:class:`RobustHeldOut`), and fast AT's catastrophic-overfitting guard (:class:`OverfitGuard`).

Catastrophic overfitting (Wong, Rice & Kolter 2020): within an epoch, PGD accuracy collapses while FGSM
accuracy soars. The guard compares each epoch's held-out PGD accuracy with the best so far: a fall of more
than ``drop`` is a collapse, after which the weights of the best epoch are restored and training stops
(``action="stop"``), or the epoch runs again from its start with half the step size and learning rate
(``"restart"``; after four halvings it stops).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ...threat import ThreatModel
from ...training import Callback, Trainer, accuracy
from .steps import AdversarialStep, pgd_examples, radius

__all__ = ["OverfitGuard", "RobustHeldOut"]


def _robust_accuracy(
    module: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, steps: int, generator: torch.Generator
) -> float:
    adv = pgd_examples(module, x, y, threat, steps, 2.5 * radius(threat) / steps, generator)
    return accuracy(module, adv, y)


class RobustHeldOut:
    """Monitor: ``val_clean_accuracy`` and ``val_robust_accuracy`` (PGD-``steps`` from a random start drawn
    from the run's generator, step 2.5·eps/steps) on held-out inputs."""

    def __init__(self, x: Tensor, y: Tensor, threat: ThreatModel, steps: int) -> None:
        self.x, self.y, self.threat, self.steps = x, y, threat, steps

    def __call__(self, module: nn.Module, generator: torch.Generator) -> dict[str, float]:
        return {
            "val_clean_accuracy": accuracy(module, self.x, self.y),
            "val_robust_accuracy": _robust_accuracy(module, self.x, self.y, self.threat, self.steps, generator),
        }


class OverfitGuard(Callback):
    """Fast AT's catastrophic-overfitting check on the monitor's ``val_robust_accuracy``.

    Args:
        drop: a fall of more than this below the best held-out PGD accuracy is a collapse.
        action: 'stop' (restore the best epoch's weights, stop) or 'restart' (rerun the epoch from its start,
            step size and learning rate halved).
        lr: the base learning rate (a restart sets ``lr * step.lr_scale``).

    The record gets ``overfit_events`` (one per collapse) and, on a stop, ``stopped_early`` and
    ``restored_epoch``; the collapsed epoch's entry is marked ``catastrophic_overfitting``.
    """

    def __init__(self, *, drop: float, action: str, lr: float) -> None:
        self.drop, self.action, self.lr = drop, action, lr
        self.best, self.best_epoch = -1.0, 0
        self.best_state: dict[str, Any] | None = None
        self._start: dict[str, Any] = {}

    def start_epoch(self, trainer: Trainer, epoch: int) -> None:
        self._start = {
            "model": copy.deepcopy(trainer.module.state_dict()),
            "optimizer": copy.deepcopy(trainer.optimizer.state_dict()),
        }
        if self.action == "restart":
            self._start["step"] = {
                k: v.clone() if isinstance(v, Tensor) else v for k, v in trainer.step.state_dict().items()
            }

    def end_epoch(self, trainer: Trainer, entry: dict[str, Any]) -> str:
        robust = entry["val_robust_accuracy"]
        if self.best >= 0 and robust < self.best - self.drop:
            return self._collapse(trainer, entry, robust)
        if robust >= self.best:
            self.best, self.best_state, self.best_epoch = (
                robust,
                copy.deepcopy(trainer.module.state_dict()),
                entry["epoch"],
            )
        return "continue"

    def _collapse(self, trainer: Trainer, entry: dict[str, Any], robust: float) -> str:
        event = {"epoch": entry["epoch"], "val_robust_accuracy": robust, "best": self.best, "action": self.action}
        trainer.record.setdefault("overfit_events", []).append(event)
        entry["catastrophic_overfitting"] = True
        step = trainer.step
        scale = step.lr_scale if isinstance(step, AdversarialStep) else 1.0
        if self.action == "stop" or scale < 1 / 16:
            trainer.module.load_state_dict(self.best_state if self.best_state is not None else self._start["model"])
            trainer.record["stopped_early"] = True
            trainer.record["restored_epoch"] = self.best_epoch
            return "stop"
        trainer.module.load_state_dict(self._start["model"])
        trainer.optimizer.load_state_dict(self._start["optimizer"])
        if "step" in self._start:
            step.load_state_dict(self._start["step"])
        if isinstance(step, AdversarialStep):
            step.lr_scale = scale / 2
        for group in trainer.optimizer.param_groups:
            group["lr"] = self.lr * (scale / 2)
        return "repeat"  # the same epoch again, with half the step and learning rate

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"best_robust": self.best, "best_epoch": self.best_epoch}
        return state | ({"best_model": self.best_state} if self.best_state is not None else {})

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.best_epoch = float(state["best_robust"]), int(state["best_epoch"])
        self.best_state = state.get("best_model")
