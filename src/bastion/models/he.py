"""HE-friendly building blocks: what a network needs to be evaluated on CKKS ciphertexts.

CKKS computes additions and multiplications only, so a network that runs encrypted is affine layers (linear,
convolution, average pooling, flatten, batch norm in eval mode) and **polynomial activations**. :class:`PolyAct`
is the degree-2 activation ``a x^2 + b x + c`` (``a > 0``): :mod:`bastion.defenses.encrypted` folds ``a``, ``b``
and ``c`` into the neighbouring affine layers, so each activation costs exactly one multiplicative level (one
squaring). :func:`he_friendly` rewrites a module in place of training: ReLU-like activations become
:class:`PolyAct`, max pooling becomes average pooling of the same window.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

__all__ = ["RELU_APPROX", "PolyAct", "he_friendly", "he_rewrites"]

RELU_APPROX = (0.125, 0.5, 0.25)
"""Default coefficients ``(a, b, c)`` of :class:`PolyAct`: ``0.125 x^2 + 0.5 x + 0.25``, a degree-2 stand-in for
ReLU near the origin (slope 1/2 at 0, like ReLU's average slope; the square term keeps it convex)."""


class PolyAct(nn.Module):
    """The activation ``a x^2 + b x + c`` with fixed coefficients (``a > 0``); one squaring under CKKS."""

    coeffs: Tensor

    def __init__(self, a: float = RELU_APPROX[0], b: float = RELU_APPROX[1], c: float = RELU_APPROX[2]) -> None:
        super().__init__()
        if not a > 0:
            raise ValueError(f"PolyAct needs a > 0 (the square term), got a={a}")
        self.register_buffer("coeffs", torch.tensor([float(a), float(b), float(c)]))

    def forward(self, x: Tensor) -> Tensor:
        a, b, c = self.coeffs.to(x.dtype)
        return (a * x + b) * x + c

    def extra_repr(self) -> str:
        a, b, c = (float(v) for v in self.coeffs)
        return f"{a:g}*x^2 + {b:g}*x + {c:g}"


_RELU_LIKE = (nn.ReLU, nn.GELU, nn.SiLU, nn.ELU, nn.LeakyReLU, nn.Softplus, nn.Tanh, nn.Sigmoid)


def he_friendly(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every ReLU-like activation replaced by :class:`PolyAct` and every max pooling by
    average pooling of the same kernel, stride and padding (the weights are kept: retrain or fine-tune after)."""
    out = copy.deepcopy(module)
    _replace(out)
    return out


def he_rewrites(module: nn.Module) -> list[str]:
    """What :func:`he_friendly` would change in ``module``, one ``"path: ReLU -> PolyAct"`` per layer; empty when
    the module has nothing to rewrite (it may still hold layers CKKS cannot evaluate: compiling tells)."""
    return [f"{path}: {type(old).__name__} -> {type(new).__name__}" for path, old, new in _rewrites(module, "")]


def _rewrites(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module, nn.Module]]:
    out: list[tuple[str, nn.Module, nn.Module]] = []
    for name, child in module.named_children():
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(child, _RELU_LIKE):
            out.append((path, child, PolyAct()))
        elif isinstance(child, nn.MaxPool2d):
            out.append((path, child, nn.AvgPool2d(child.kernel_size, child.stride, child.padding)))
        else:
            out += _rewrites(child, path)
    return out


def _replace(module: nn.Module) -> None:
    for path, _, new in _rewrites(module, ""):
        parent, _, name = path.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, name, new)
