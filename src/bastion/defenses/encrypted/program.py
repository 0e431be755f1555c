"""A trained network compiled into what CKKS evaluates: affine maps and squarings.

:func:`compile_model` walks a torch module's layers in order. Consecutive affine layers (``Linear``, ``Conv1d/2d``,
``AvgPool1d/2d``, ``Flatten``, ``Unflatten``, ``BatchNorm`` in eval mode, ``Dropout``, ``Identity``, bastion's
logistic models) are composed into **one** dense affine map on the flattened input — so a standardisation, a
convolution and a pooling cost one multiplicative level together, not three. A polynomial activation
``a z^2 + b z + c`` (:class:`~bastion.models.he.PolyAct`) is folded exactly: the affine map before it is scaled to
``sqrt(a) (z + b / 2a)``, the activation becomes one squaring, and the constant ``c - b^2 / 4a`` moves into the
next affine map's bias. A final softmax is dropped (the program outputs logits, which have the same argmax). The
multiplicative depth is then ``#affine maps + #activations``, and :func:`~.params.choose_params` sizes CKKS from it.

Anything else (ReLU, max pooling, attention, ...) is refused with the layer's name: CKKS cannot evaluate it.
:meth:`HEProgram.plain` evaluates the compiled program in float64 — the reference the encrypted result is compared
with, and equal to the module's logits up to rounding (tested).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ...errors import UsageError
from ...models.he import PolyAct
from ...models.linear import LogisticModel
from .params import CKKSParams, choose_params

__all__ = ["AddConst", "Affine", "HEProgram", "Square", "compile_model"]

_AFFINE_LAYERS = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.Flatten,
    nn.Unflatten,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.Dropout,
    nn.Identity,
)
_FINAL_ONLY = (nn.Softmax, nn.LogSoftmax)


@dataclass(frozen=True)
class Affine:
    """``x -> x @ weight.T + bias`` on the flattened values; one multiplicative level."""

    weight: np.ndarray  # (out, in) float64
    bias: np.ndarray  # (out,) float64

    @property
    def nonzeros(self) -> int:
        return int(np.count_nonzero(self.weight))


@dataclass(frozen=True)
class Square:
    """Every value squared (ciphertext x ciphertext, relinearised); one multiplicative level."""


@dataclass(frozen=True)
class AddConst:
    """A constant added to every value (a final activation's constant); no level."""

    value: np.ndarray  # (d,)


Step = Affine | Square | AddConst


@dataclass
class HEProgram:
    """A compiled network: ``steps`` on (n, input_dim) float64 rows; ``layers`` names what was compiled."""

    steps: list[Step]
    input_shape: tuple[int, ...]
    layers: list[str] = field(default_factory=list)

    @property
    def input_dim(self) -> int:
        return math.prod(self.input_shape)

    @property
    def n_outputs(self) -> int:
        dim = self.input_dim
        for step in self.steps:
            if isinstance(step, Affine):
                dim = step.weight.shape[0]
        return dim

    @property
    def depth(self) -> int:
        """Multiplicative depth: one level per affine map and per squaring."""
        return sum(not isinstance(s, AddConst) for s in self.steps)

    @property
    def params(self) -> CKKSParams:
        """The 128-bit-secure CKKS parameters for this depth (:func:`~.params.choose_params`)."""
        return choose_params(self.depth)

    @property
    def plaintext_multiplications(self) -> int:
        """Ciphertext-by-scalar products per evaluation (the affine maps' non-zero weights): the cost driver."""
        return sum(s.nonzeros for s in self.steps if isinstance(s, Affine))

    def plain(self, x: np.ndarray) -> np.ndarray:
        """The program in float64 on ``x`` (n, *input_shape) or (n, input_dim): (n, n_outputs) logits."""
        h = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        for step in self.steps:
            if isinstance(step, Affine):
                h = h @ step.weight.T + step.bias
            elif isinstance(step, Square):
                h = h * h
            else:
                h = h + step.value
        return h

    def describe(self) -> dict[str, Any]:
        return {
            "input_shape": list(self.input_shape),
            "n_outputs": self.n_outputs,
            "depth": self.depth,
            "steps": [type(s).__name__.lower() for s in self.steps],
            "plaintext_multiplications": self.plaintext_multiplications,
            "layers": self.layers,
        }


def compile_model(module: nn.Module, input_shape: tuple[int, ...], *, arch: str | None = None) -> HEProgram:
    """Compile ``module`` (inputs ``input_shape``, one sample) into an :class:`HEProgram`.

    Raises:
        UsageError: a layer CKKS cannot evaluate (named, with the ``--he-friendly`` alternative), or no layer at all.
    """
    module = module.eval()
    leaves = list(_leaves(module, ""))
    builder = _Builder(tuple(int(d) for d in input_shape))
    for i, (path, layer) in enumerate(leaves):
        if isinstance(layer, _FINAL_ONLY) and i == len(leaves) - 1:
            builder.layers.append(f"{path}: {type(layer).__name__} (dropped: the program outputs logits)")
        elif isinstance(layer, PolyAct):
            builder.activation(path, *(float(c) for c in layer.coeffs))
        elif isinstance(layer, (*_AFFINE_LAYERS, LogisticModel)):
            builder.affine(path, layer)
        else:
            hint = f"bastion train --arch {arch} --he-friendly" if arch else "bastion train --arch ARCH --he-friendly"
            raise UsageError(
                f"layer {path} ({type(layer).__name__}) cannot be evaluated on CKKS ciphertexts: only affine layers "
                f"and polynomial activations can; train an HE-friendly model ({hint}: polynomial activations, "
                "average pooling)"
            )
    return builder.finish()


def _leaves(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
    children = list(module.named_children())
    if isinstance(module, (PolyAct, LogisticModel)) or not children:
        yield prefix or type(module).__name__, module
        return
    if not isinstance(module, nn.Sequential):
        raise UsageError(
            f"module {prefix or type(module).__name__} ({type(module).__name__}) is not an nn.Sequential: its "
            "forward order is unknown, so it cannot be compiled for CKKS; express the model as nn.Sequential"
        )
    for name, child in children:
        yield from _leaves(child, f"{prefix}.{name}" if prefix else name)


class _Builder:
    """Composes affine layers and folds activations (see the module docstring)."""

    def __init__(self, input_shape: tuple[int, ...]) -> None:
        self.input_shape, self.shape = input_shape, input_shape
        self.steps: list[Step] = []
        self.layers: list[str] = []
        self.pending: tuple[np.ndarray, np.ndarray] | None = None
        self.carry: np.ndarray | None = None  # constant added after the last squaring

    def affine(self, path: str, layer: nn.Module) -> None:
        weight, bias, self.shape = _affine_of(layer, self.shape)
        self.layers.append(f"{path}: {type(layer).__name__}")
        if self.pending is None:
            if self.carry is not None:
                bias = bias + weight @ self.carry
                self.carry = None
            self.pending = (weight, bias)
        else:
            w0, b0 = self.pending
            self.pending = (weight @ w0, weight @ b0 + bias)

    def activation(self, path: str, a: float, b: float, c: float) -> None:
        if self.pending is None:  # an activation straight after another, or on the input
            d = math.prod(self.shape)
            carry, self.carry = (self.carry if self.carry is not None else np.zeros(d)), None
            self.pending = (np.eye(d), carry)
        weight, bias = self.pending
        root = math.sqrt(a)
        self.steps += [Affine(root * weight, root * (bias + b / (2 * a))), Square()]
        self.pending, self.carry = None, np.full(weight.shape[0], c - b * b / (4 * a))
        self.layers.append(f"{path}: PolyAct (one squaring)")

    def finish(self) -> HEProgram:
        if self.pending is not None:
            weight, bias = self.pending
            self.steps.append(Affine(weight, bias))
        elif self.carry is not None and np.any(self.carry):
            self.steps.append(AddConst(self.carry))
        if not any(isinstance(s, Affine) for s in self.steps):
            raise UsageError("the model has no affine layer: nothing to evaluate under encryption")
        return HEProgram(self.steps, self.input_shape, self.layers)


@torch.no_grad()
def _affine_of(layer: nn.Module, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """``layer`` as a dense (W, b) on the flattened input of ``shape``, and its output shape (one sample): the
    layer applied in float64 to zero (the bias) and to each basis vector (bias + one column of W)."""
    if isinstance(layer, LogisticModel):
        w, b = layer.affine()
        if layer.n_classes == 2:  # log-odds [0, z]
            w, b = torch.cat([torch.zeros_like(w), w]), torch.cat([torch.zeros_like(b), b])
        return w.numpy(), b.numpy(), (w.shape[0],)
    d = math.prod(shape)
    probe = torch.cat([torch.zeros(1, d), torch.eye(d)]).reshape(d + 1, *shape).double()
    out = copy.deepcopy(layer).double()(probe)
    out_shape = tuple(out.shape[1:])
    flat = out.reshape(d + 1, -1)
    return (flat[1:] - flat[0]).T.numpy().copy(), flat[0].numpy().copy(), out_shape
