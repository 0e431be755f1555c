"""Dirty-label backdoors: stamp a trigger on a share of the training records and relabel them.

- :class:`BadNets` — Gu, Dolan-Gavitt & Garg 2017, "BadNets: Identifying Vulnerabilities in the Machine
  Learning Model Supply Chain": a small patch (a 3x3 checkerboard in a corner by default) at a fixed or
  random place;
- :class:`Blended` — Chen, Liu, Li, Lu & Song 2017, "Targeted Backdoor Attacks on Deep Learning Systems
  Using Data Poisoning": a pattern or noise blended over the whole input at a low opacity.

Threat model: the attacker controls ``rate`` of the training records (inputs and labels) and nothing else;
at test time it stamps the same trigger on any input. **All-to-one** (default): poisoned records are drawn
from the classes other than ``target`` and relabelled ``target``; a successful backdoor makes the model
answer ``target`` on triggered inputs while staying accurate on clean ones. **All-to-all**: a record of
class c is relabelled c + 1 mod K (Gu et al. Sec. 4.2).

Shapes: any (N, *input_shape) data the trigger fits — images (C, H, W) or feature vectors (F,).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ...data.dataset import Dataset
from ...errors import UsageError
from .base import PoisonedData, PoisoningAttack, register_poisoning
from .triggers import Trigger

__all__ = ["BackdoorAttack", "BadNets", "Blended"]


@dataclass(kw_only=True, eq=False, repr=False)
class BackdoorAttack(PoisoningAttack):
    """Stamp a trigger on ``rate`` of the training records and relabel them (dirty label).

    Args:
        rate: share of the training split to poison, in (0, 1).
        target: the label triggered inputs should get (all-to-one).
        all_to_all: relabel class c as c + 1 mod K instead (``target`` is then ignored).
        trigger: a :class:`Trigger` built for the data; default: the subclass's trigger.
        trigger_image: a PNG/JPEG file to use as the trigger (see :meth:`Trigger.from_image`).
        seed, generator: which records are poisoned (and random trigger placements).
    """

    target: int = 0
    all_to_all: bool = False
    trigger: Trigger | None = None
    trigger_image: str | Path | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.trigger is not None and not isinstance(self.trigger, Trigger):
            raise UsageError(f"trigger must be a bastion Trigger, got {type(self.trigger).__name__}")
        if self.trigger is not None and self.trigger_image is not None:
            raise UsageError("give a trigger or a trigger_image, not both")
        self.all_to_all = bool(self.all_to_all)

    def build_trigger(self, data: Dataset) -> Trigger:
        """The trigger for ``data`` (the one given, else the subclass's default for this input shape)."""
        if self.trigger is not None:
            trig = self.trigger
        elif self.trigger_image is not None:
            trig = Trigger.from_image(self.trigger_image, data.input_shape, bounds=data.bounds)
        else:
            trig = self._default_trigger(data)
        trig.check(data.input_shape, data.bounds)
        return trig

    def _default_trigger(self, data: Dataset) -> Trigger:  # pragma: no cover - abstract
        raise NotImplementedError

    def _poison(self, data: Dataset, generator: torch.Generator) -> PoisonedData:
        trig = self.build_trigger(data)
        x, y = data.x_train, data.y_train
        n = x.shape[0]
        candidates = torch.arange(n) if self.all_to_all else torch.nonzero(y.ne(self.target)).flatten()
        k = self._count(n)
        too_few = (
            f"a poison rate of {self.rate:g} needs {k} records outside the target class, the data has "
            f"{candidates.numel()}: lower the rate"
        )
        pick = self._draw(candidates, k, generator, too_few=too_few)
        original = y[pick].clone()
        new_labels = (original + 1) % data.n_classes if self.all_to_all else torch.full_like(original, self.target)
        x[pick] = trig.apply(x[pick], generator)
        y[pick] = new_labels
        return self._changed_in_place(
            data,
            pick,
            original,
            new_labels,
            target=None if self.all_to_all else int(self.target),
            trigger=trig,
            all_to_all=self.all_to_all,
        )

    def apply_trigger(self, x: torch.Tensor, data: Dataset, generator: torch.Generator | None = None) -> torch.Tensor:
        """``x`` (N, *input_shape) with this attack's trigger for ``data`` stamped on every input."""
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        return self.build_trigger(data).apply(x, g)


@register_poisoning("badnets")
@dataclass(kw_only=True, eq=False, repr=False)
class BadNets(BackdoorAttack):
    """BadNets (Gu et al. 2017): a small patch trigger, all-to-one or all-to-all.

    Args (besides :class:`BackdoorAttack`'s):
        size: the patch's side in pixels (images) or its number of features (feature vectors); default 3.
        location: ``bottom-right`` (default), ``bottom-left``, ``top-right``, ``top-left``, ``center``,
            ``random`` (a new place on every input, Gu et al.'s harder variant) or (row, col).
        pattern: ``checkerboard`` (default) or ``solid`` (the bounds' high value).
    """

    size: int = 3
    location: str | tuple[int, ...] = "bottom-right"
    pattern: str = "checkerboard"

    def _default_trigger(self, data: Dataset) -> Trigger:
        return Trigger.patch(
            data.input_shape, size=self.size, location=self.location, pattern=self.pattern, bounds=data.bounds
        )


@register_poisoning("blend")
@dataclass(kw_only=True, eq=False, repr=False)
class Blended(BackdoorAttack):
    """Blended injection (Chen et al. 2017): a key pattern blended over the whole input at opacity ``alpha``.

    Args (besides :class:`BackdoorAttack`'s):
        alpha: the blend's opacity in (0, 1]; Chen et al. poison with 0.2 and trigger with 0.2.
        pattern: ``noise`` (uniform random key, default, drawn from ``pattern_seed``) or ``stripes``.
        pattern_seed: seeds the random key (the attacker's secret; independent of which records are poisoned).
    """

    alpha: float = 0.2
    pattern: str = "noise"
    pattern_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        alpha = self.alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1:
            raise UsageError(f"alpha (the blend's opacity) must lie in (0, 1], got {alpha!r}")
        self.alpha = float(alpha)

    def _default_trigger(self, data: Dataset) -> Trigger:
        return Trigger.blend(
            data.input_shape, pattern=self.pattern, alpha=self.alpha, bounds=data.bounds, seed=self.pattern_seed
        )
