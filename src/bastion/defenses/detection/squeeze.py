"""Feature squeezing (Xu, Evans & Qi 2018, "Feature Squeezing: Detecting Adversarial Examples in Deep
Neural Networks", NDSS).

Squeezers remove input detail a classifier should not depend on: bit-depth reduction (1 bit for
MNIST, 4-5 bits for CIFAR-10) and local median smoothing (2x2 for MNIST and CIFAR-10). An adversarial
perturbation is often undone by a squeezer while a clean prediction barely moves, so the score is

    score(x) = max_k || softmax(f(x)) - softmax(f(squeeze_k(x))) ||_1        in [0, 2],

higher = more suspicious. The default squeezers are the paper's MNIST configuration; give others
(``squeezers=[BitDepth(bits=5), MedianSmoothing(size=2)]``) for other data.

Not differentiable as such: bit-depth reduction is piecewise constant (zero gradient) and a median
routes the gradient to one pixel per window. For adaptive attacks each squeezer offers a BPDA version
(Athalye, Carlini & Wagner 2018, "Obfuscated Gradients Give a False Sense of Security"): the forward
pass applies the squeezer exactly, the backward pass is the identity (straight-through) — or, for
bit-depth reduction, the derivative of a smoothed staircase (see :class:`BitDepth`);
:meth:`Detector.attack_forward` uses it. The squeezers are public
(``detector.squeezers``) so other attacks can do the same.

Shapes: images (N, C, H, W) for median smoothing, any (N, ...) for bit depth; scores (N,).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ...errors import UsageError
from ...models.base import Classifier
from .base import Detector, register_detector

__all__ = ["BitDepth", "FeatureSqueezing", "MedianSmoothing", "Squeezer"]


class _StraightThrough(torch.autograd.Function):
    """Returns ``squeezed`` in the forward pass and passes the gradient to ``x`` times ``weight`` (BPDA;
    ``weight=None``: unchanged)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, squeezed: Tensor, weight: Tensor | None) -> Tensor:
        ctx.weight = weight
        return squeezed.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        return (grad if ctx.weight is None else grad * ctx.weight), None, None


class Squeezer:
    """An input transformation ``squeeze(x, bounds) -> x'`` of the same shape, with a BPDA view."""

    def __call__(self, x: Tensor, bounds: tuple[float, float]) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def bpda(self, x: Tensor, bounds: tuple[float, float]) -> Tensor:
        """Forward: the squeezed input exactly; backward: identity (straight-through estimator)."""
        return _StraightThrough.apply(x, self(x.detach(), bounds), None)

    def check(self, input_shape: tuple[int, ...]) -> None:
        """Raise UsageError if inputs of this shape cannot be squeezed."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class BitDepth(Squeezer):
    """Reduce each value to ``bits`` bits: round((x - lo) / (hi - lo) * (2^bits - 1)) on the same grid.

    BPDA (``bpda``): the forward pass is exact; the backward pass is the derivative of a smoothed
    staircase — a sigmoid of temperature ``bpda_temperature`` (in units of the level spacing) at each
    rounding threshold, scaled to 1 at the threshold — Athalye et al.'s BPDA with a differentiable
    approximation g(x) ~ squeeze(x) rather than the identity. It tells the attacker which values can
    cross a level: against 1-bit MNIST squeezing at eps=0.3 it raised the adaptive attack's success from
    0.19 to 0.26 (200 test images). ``bpda_temperature=None``: the identity (straight-through).
    """

    def __init__(self, *, bits: int = 1, bpda_temperature: float | None = 0.1) -> None:
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
            raise UsageError(f"bits must be an integer in [1, 16] (1 for MNIST, 5 for CIFAR-10), got {bits!r}")
        if bpda_temperature is not None and (
            isinstance(bpda_temperature, bool)
            or not isinstance(bpda_temperature, (int, float))
            or not bpda_temperature > 0
        ):
            raise UsageError(f"bpda_temperature must be a number > 0 (e.g. 0.1) or None, got {bpda_temperature!r}")
        self.bits = bits
        self.bpda_temperature = bpda_temperature

    def __call__(self, x: Tensor, bounds: tuple[float, float]) -> Tensor:
        lo, hi = bounds
        levels = 2**self.bits - 1
        return torch.round((x - lo) / (hi - lo) * levels) / levels * (hi - lo) + lo

    def bpda(self, x: Tensor, bounds: tuple[float, float]) -> Tensor:
        if self.bpda_temperature is None:
            return super().bpda(x, bounds)
        lo, hi = bounds
        with torch.no_grad():
            u = (x - lo) / (hi - lo) * (2**self.bits - 1)
            offset = u - torch.floor(u) - 0.5  # distance to the nearest rounding threshold, in level units
            sig = torch.sigmoid(offset / self.bpda_temperature)
            weight = 4.0 * sig * (1.0 - sig)
        return _StraightThrough.apply(x, self(x.detach(), bounds), weight)


def _reflect_index(n: int, before: int, after: int, device: torch.device) -> Tensor:
    """Indices padding a length-``n`` axis by reflection about the edge (``d c b a | a b c d``, scipy's 'reflect')."""
    j = torch.arange(-before, n + after, device=device)
    period = 2 * n
    j = torch.remainder(j, period)
    return torch.where(j >= n, period - 1 - j, j)


class MedianSmoothing(Squeezer):
    """Median over a ``size`` x ``size`` window per channel, as ``scipy.ndimage.median_filter(size=...)``.

    The window of output pixel (i, j) spans rows ``i - size//2 .. i - size//2 + size - 1`` (same for
    columns), edges padded by reflection, and for an even window the upper median is taken (scipy's
    rank ``size*size // 2``) — Xu et al.'s 2x2 filter.
    """

    def __init__(self, *, size: int = 2) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 2:
            raise UsageError(f"size must be an integer >= 2 (2 for MNIST and CIFAR-10), got {size!r}")
        self.size = size

    def check(self, input_shape: tuple[int, ...]) -> None:
        if len(input_shape) != 3:
            raise UsageError(
                f"median smoothing needs images (C, H, W), but inputs have shape {input_shape}: "
                "use squeezers=[BitDepth(...)] for non-image data"
            )

    def __call__(self, x: Tensor, bounds: tuple[float, float]) -> Tensor:
        k = self.size
        n, c, h, w = x.shape
        before, after = k // 2, k - 1 - k // 2
        xp = x.index_select(2, _reflect_index(h, before, after, x.device))
        xp = xp.index_select(3, _reflect_index(w, before, after, x.device))
        patches = xp.unfold(2, k, 1).unfold(3, k, 1).reshape(n, c, h, w, k * k)
        return patches.sort(dim=-1).values[..., (k * k) // 2]


@register_detector("squeeze")
class FeatureSqueezing(Detector):
    """Xu et al. 2018: largest L1 change of the softmax output under any squeezer.

    Args:
        squeezers: the squeezers; default ``(BitDepth(bits=1), MedianSmoothing(size=2))`` (the paper's
            MNIST setting).
        batch_size: inputs per forward pass.

    Works with any Classifier (only its scores are read); an adaptive (BPDA) attack needs a white-box
    one. Fitted: ``model_``; after :meth:`calibrate` ``threshold_``, ``fpr_``, ``scale_``. ``fit`` learns
    nothing but checks that the squeezers fit the inputs.
    """

    differentiable = False

    def __init__(self, *, squeezers: Sequence[Squeezer] | None = None, batch_size: int = 500) -> None:
        super().__init__(batch_size=batch_size)
        chosen = list(squeezers) if squeezers is not None else [BitDepth(bits=1), MedianSmoothing(size=2)]
        if not chosen or not all(isinstance(s, Squeezer) for s in chosen):
            raise UsageError(
                f"squeezers must be a non-empty list of Squeezer objects (BitDepth, MedianSmoothing), got {squeezers!r}"
            )
        self.squeezers = chosen

    def _check_model(self, model: Classifier) -> None:
        for s in self.squeezers:
            s.check(tuple(model.input_shape))

    def _fit(self, model: Classifier, x: Tensor, y: Tensor) -> None:
        pass

    def _forward(self, x: Tensor, bpda: bool) -> tuple[Tensor, Tensor, list[Tensor]]:
        bounds = self.model_.bounds
        views = [s.bpda(x, bounds) if bpda else s(x, bounds) for s in self.squeezers]
        z_all = self.model_.logits(torch.cat([x, *views]))  # one forward pass for the input and its views
        p_all = z_all if self.model_.output == "probabilities" else torch.softmax(z_all, dim=1)
        z, *z_views = z_all.split(x.shape[0])
        p, *p_views = p_all.split(x.shape[0])
        dists = torch.stack([(p - pv).abs().sum(dim=1) for pv in p_views], dim=1)
        return z, dists.amax(dim=1), list(z_views)

    def _logits_and_score(self, x: Tensor, *, bpda: bool) -> tuple[Tensor, Tensor]:
        z, s, _ = self._forward(x, bpda)
        return z, s

    def _attack_forward(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        return self._forward(x, True)
