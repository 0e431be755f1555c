"""One class's reverse-engineered trigger in Neural Cleanse: its parametrisation and its cost schedule.

Following the authors' reference code (bolunwang/backdoor, ``visualizer.py``): the mask (1, H, W) and the
pattern (C, H, W) are optimised as unconstrained tensors ``a`` mapped into range by
``tanh(a) / (2 - eps) + 0.5`` (the pattern then scaled onto the model's bounds), and the weight of the mask's
L1 norm follows :class:`CostSchedule`, which also decides which step's trigger is kept and when to stop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["CostSchedule", "TriggerSearch", "from_tanh", "to_tanh"]

EPS = 1e-7  # the reference's K.epsilon() in the tanh parametrisation


def from_tanh(a: Tensor) -> Tensor:
    """Unconstrained parameters -> values in [0, 1] (the reference's ``tanh(a) / (2 - eps) + 0.5``)."""
    return torch.tanh(a) / (2 - EPS) + 0.5


def to_tanh(v: Tensor) -> Tensor:
    """Values in [0, 1] -> the parameters :func:`from_tanh` maps back to them (float32)."""
    return torch.atanh((v.double() - 0.5) * (2 - EPS)).float()


@dataclass
class CostSchedule:
    """The reference's cost schedule and early stop for one class, step by step (pure bookkeeping).

    After each step, :meth:`update` takes the step's attack success rate and mean mask L1 norm. The cost
    starts at 0 (``reset_cost_to_zero``) or ``init_cost``; from 0 it is set to ``init_cost`` after
    ``patience`` successful steps (success >= ``success_threshold``); then ``patience`` successes in a row
    multiply it by ``multiplier`` and ``patience`` failures divide it by ``multiplier ** 1.5``. The step's
    trigger is the best so far when it succeeded with a smaller norm than every earlier success. With
    ``early_stop`` the search is ``done`` once the cost has gone both up and down and the best norm has not
    fallen below ``early_stop_threshold`` times its previous value for ``early_stop_patience`` steps.

    >>> s = CostSchedule(init_cost=1e-3, patience=2, reset_cost_to_zero=True)
    >>> [s.update(1.0, r) for r in (50.0, 40.0)], s.cost  # 2 successes at cost 0 switch init_cost on
    ([True, True], 0.001)
    >>> s.update(1.0, 45.0), s.cost  # a larger norm is not kept; a 2nd success in a row raises the cost
    (False, 0.0015)
    >>> s.update(0.5, 20.0), s.update(0.5, 20.0), round(s.cost, 6)  # failures are not kept; 2 lower the cost
    (False, False, 0.000816)
    """

    init_cost: float = 1e-3
    patience: int = 5
    multiplier: float = 1.5
    success_threshold: float = 0.99
    early_stop: bool = True
    early_stop_threshold: float = 0.99
    early_stop_patience: int = 10
    reset_cost_to_zero: bool = False
    cost: float = field(init=False)
    reg_best: float = field(init=False, default=math.inf)
    steps: int = field(init=False, default=0)
    done: bool = field(init=False, default=False)
    _counts: dict[str, int] = field(init=False, repr=False)
    _went: dict[str, bool] = field(init=False, repr=False)
    _stop_reg_best: float = field(init=False, repr=False, default=math.inf)

    def __post_init__(self) -> None:
        self.cost = 0.0 if self.reset_cost_to_zero else self.init_cost
        self._counts = dict.fromkeys(("set", "up", "down", "stop"), 0)
        self._went = {"up": False, "down": False}

    def update(self, asr: float, reg: float) -> bool:
        """Account for one step; True when that step's trigger is the new best (keep it)."""
        self.steps += 1
        c, went = self._counts, self._went
        succeeded = asr >= self.success_threshold
        best = succeeded and reg < self.reg_best
        if best:
            self.reg_best = reg
        if self.early_stop:
            if self.reg_best < math.inf:
                c["stop"] = c["stop"] + 1 if self.reg_best >= self.early_stop_threshold * self._stop_reg_best else 0
            self._stop_reg_best = min(self.reg_best, self._stop_reg_best)
            if went["up"] and went["down"] and c["stop"] >= self.early_stop_patience:
                self.done = True
                return best
        c["set"] = c["set"] + 1 if self.cost == 0 and succeeded else 0
        if c["set"] >= self.patience:
            self.cost, c["up"], c["down"], went["up"], went["down"] = self.init_cost, 0, 0, False, False
        c["up"], c["down"] = (c["up"] + 1, 0) if succeeded else (0, c["down"] + 1)
        if c["up"] >= self.patience:
            c["up"], self.cost, went["up"] = 0, self.cost * self.multiplier, True
        elif c["down"] >= self.patience:
            c["down"], self.cost, went["down"] = 0, self.cost / self.multiplier**1.5, True
        return best


@dataclass
class TriggerSearch:
    """One class's trigger being reverse-engineered: parameters in tanh space, schedule, best trigger so far."""

    cls: int
    mask_param: Tensor  # (1, H, W)
    pattern_param: Tensor  # (C, H, W)
    schedule: CostSchedule
    best: tuple[Tensor, Tensor] | None = None

    def trigger(self, bounds: tuple[float, float]) -> tuple[Tensor, Tensor]:
        """The mask (1, H, W) in [0, 1] and pattern (C, H, W) inside ``bounds``, on the autograd graph."""
        lo, hi = bounds
        return from_tanh(self.mask_param), lo + (hi - lo) * from_tanh(self.pattern_param)

    def end_step(self, asr: float, reg: float, bounds: tuple[float, float]) -> None:
        """Feed the step's success and mean norm to the schedule; keep the current trigger if it is the best."""
        if self.schedule.update(asr, reg):
            mask, pattern = self.trigger(bounds)
            self.best = (mask.detach().clone(), pattern.detach().clone())

    def result(self, bounds: tuple[float, float]) -> tuple[Tensor, Tensor]:
        """The best trigger, or the current one if no step reached the success threshold."""
        if self.best is not None:
            return self.best
        mask, pattern = self.trigger(bounds)
        return mask.detach(), pattern.detach()
