"""What a backdoor scan finds: the anomaly index of the reversed triggers' sizes, and the triggers themselves.

:func:`anomaly_index` is the pure statistic of Neural Cleanse (Wang et al. 2019, Sec. IV-B): how many robust
standard deviations each class's reversed-trigger L1 norm lies from the median, with the median absolute
deviation (MAD) scaled by 1.4826 so it estimates a normal distribution's standard deviation. A backdoor's
target class needs a much smaller trigger than the others, so only norms *below* the median are flagged
(:func:`flag_small_outliers`). :class:`ScanResult` holds one scan's numbers and triggers, writes them as
JSON-able values and PNG pictures, and turns a reversed trigger into a :class:`~bastion.attacks.poisoning.
Trigger` that stamps it on inputs.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...attacks.poisoning import Trigger
from ...errors import UsageError

__all__ = ["MAD_CONSISTENCY", "ScanResult", "anomaly_index", "flag_small_outliers"]

MAD_CONSISTENCY = 1.4826
"""The MAD times this estimates the standard deviation of normally distributed values (1 / Phi^-1(3/4))."""


def anomaly_index(norms: Sequence[float]) -> list[float]:
    """``|norm - median| / (1.4826 * MAD)`` for every norm (Neural Cleanse's anomaly index).

    ``MAD = median(|norm - median|)``. When the MAD is 0 (half the norms or more are equal), a norm equal to
    the median scores 0 and any other ``inf``.

    >>> [round(a, 4) for a in anomaly_index([1.0, 10.0, 11.0, 12.0, 13.0])]
    [6.7449, 0.6745, 0.0, 0.6745, 1.349]
    >>> anomaly_index([5.0, 5.0, 5.0, 2.0])
    [0.0, 0.0, 0.0, inf]
    """
    values = [float(v) for v in norms]
    if not values:
        raise UsageError("the anomaly index needs at least one norm")
    if not all(math.isfinite(v) for v in values):
        raise UsageError(f"norms must be finite numbers, got {values}")
    median = statistics.median(values)
    mad = MAD_CONSISTENCY * statistics.median(abs(v - median) for v in values)
    if mad == 0.0:
        return [0.0 if v == median else math.inf for v in values]
    return [abs(v - median) / mad for v in values]


def flag_small_outliers(norms: Sequence[float], threshold: float = 2.0) -> list[int]:
    """Positions of the norms below the median whose anomaly index exceeds ``threshold`` (smallest first).

    >>> flag_small_outliers([1.0, 10.0, 11.0, 12.0, 13.0])
    [0]
    >>> flag_small_outliers([10.0, 11.0, 12.0, 13.0, 40.0])  # a large norm is no backdoor
    []
    """
    values = [float(v) for v in norms]
    median = statistics.median(values) if values else 0.0
    index = anomaly_index(values)
    hits = [i for i, (v, a) in enumerate(zip(values, index)) if v < median and a > threshold]
    return sorted(hits, key=lambda i: values[i])


def _finite_or_none(v: float) -> float | None:
    return v if math.isfinite(v) else None


@dataclass
class ScanResult:
    """One Neural Cleanse scan. Every list is aligned with ``classes`` (the scanned classes, increasing).

    Attributes:
        classes: the scanned class labels.
        norms: the L1 norm of each class's reversed mask (the smallest that reached the attack-success
            threshold on the clean inputs; the last one if none did).
        anomaly_index: :func:`anomaly_index` of ``norms``.
        flagged: the class labels whose norm is below the median with an anomaly index above ``threshold``,
            smallest norm first; empty when no backdoor is found.
        masks: (1, H, W) masks in [0, 1]. patterns: (C, H, W) patterns inside ``bounds``.
        trigger_asr: share of the clean inputs *not* of the class that the reversed trigger sends to it
            (``nan`` when there are none).
        reached: whether each class's optimisation reached the attack-success threshold.
        steps: optimisation steps (passes over the clean inputs) each class ran before it stopped.
        seconds: wall-clock time of the scan. n_inputs: clean inputs the scan used.
        threshold: the anomaly-index threshold. bounds: the model's input bounds.
    """

    classes: list[int]
    norms: list[float]
    anomaly_index: list[float]
    flagged: list[int]
    masks: list[Tensor]
    patterns: list[Tensor]
    trigger_asr: list[float]
    reached: list[bool]
    steps: list[int]
    seconds: float
    n_inputs: int
    threshold: float = 2.0
    bounds: tuple[float, float] = (0.0, 1.0)
    config: dict[str, Any] = field(default_factory=dict)

    def _position(self, cls: int) -> int:
        if isinstance(cls, bool) or not isinstance(cls, int) or cls not in self.classes:
            raise UsageError(f"class {cls!r} was not scanned: choose one of {self.classes}")
        return self.classes.index(cls)

    def as_trigger(self, cls: int) -> Trigger:
        """Class ``cls``'s reversed trigger as a :class:`Trigger`: ``Trigger.apply`` stamps
        ``(1 - mask) * x + mask * pattern`` (the mask repeated over the channels)."""
        i = self._position(cls)
        pattern = self.patterns[i].detach().cpu().clamp(*self.bounds)
        mask = self.masks[i].detach().cpu().clamp(0.0, 1.0).expand_as(pattern)
        return Trigger(pattern, mask, bounds=self.bounds, name=f"Neural Cleanse trigger for class {cls}")

    def to_dict(self) -> dict[str, Any]:
        """The scan's numbers as a JSON-able dict (an infinite anomaly index is written as ``None``)."""
        return {
            "method": "neural-cleanse",
            "classes": list(self.classes),
            "norms": [round(v, 4) for v in self.norms],
            "anomaly_index": [_finite_or_none(round(v, 4)) for v in self.anomaly_index],
            "flagged": list(self.flagged),
            "trigger_asr": [_finite_or_none(round(v, 4)) for v in self.trigger_asr],
            "reached": list(self.reached),
            "steps": list(self.steps),
            "threshold": self.threshold,
            "n_inputs": self.n_inputs,
            "seconds": round(self.seconds, 2),
            "config": dict(self.config),
        }

    def save_triggers(self, folder: str | Path, *, scale: int = 4) -> list[Path]:
        """Write one PNG per class, ``neural_cleanse_class_<k>.png``: the mask (white = 1) beside the masked
        pattern ``mask * pattern`` (on black), each pixel enlarged ``scale`` times. Returns the paths."""
        from PIL import Image

        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise UsageError(f"scale must be a whole number >= 1, got {scale!r}")
        out = Path(folder)
        if out.exists() and not out.is_dir():
            raise UsageError(f"{str(folder)!r} is a file, not a folder to write the trigger pictures into")
        out.mkdir(parents=True, exist_ok=True)
        lo, hi = self.bounds
        paths = []
        for cls, mask, pattern in zip(self.classes, self.masks, self.patterns):
            m = mask.detach().cpu().clamp(0.0, 1.0)
            fused = m * ((pattern.detach().cpu() - lo) / (hi - lo)).clamp(0.0, 1.0)
            if fused.shape[0] not in (1, 3):  # neither grey nor RGB: show the channels' mean
                fused = fused.mean(dim=0, keepdim=True)
            c, h, _ = fused.shape
            gap = torch.ones(c, h, 2)
            picture = torch.cat([m.expand(c, -1, -1), gap, fused], dim=2)
            picture = picture.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
            pixels = (picture * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            image = Image.fromarray(pixels[..., 0] if c == 1 else pixels, "L" if c == 1 else "RGB")
            path = out / f"neural_cleanse_class_{cls}.png"
            image.save(path)
            paths.append(path)
        return paths

    def __repr__(self) -> str:
        return (
            f"ScanResult(classes={self.classes}, flagged={self.flagged}, "
            f"min_norm={min(self.norms):.2f}, seconds={self.seconds:.1f})"
        )
