"""A trained network compiled into what CKKS evaluates: affine maps and squarings.

:func:`compile_model` walks a torch module's layers in order. Consecutive affine layers (``Linear``, ``Conv1d/2d``,
``AvgPool1d/2d``, ``Flatten``, ``Unflatten``, ``BatchNorm`` in eval mode, ``Dropout``, ``Identity``, bastion's
logistic models) are composed into **one** sparse affine map on the flattened input — so a standardisation, a
convolution and a pooling cost one multiplicative level together, not three. A polynomial activation
``a z^2 + b z + c`` (:class:`~bastion.models.he.PolyAct`) is folded exactly: the affine map before it is scaled to
``sqrt(a) (z + b / 2a)``, the activation becomes one squaring, and the constant ``c - b^2 / 4a`` moves into the
next affine map's bias. A final softmax is dropped (the program outputs logits, which have the same argmax). The
multiplicative depth is then ``#affine maps + #activations``, and :func:`~.params.choose_params` sizes CKKS from it.

Anything else (ReLU, max pooling, attention, ...) is refused with the layer's name: CKKS cannot evaluate it.
:meth:`HEProgram.plain` evaluates the compiled program in float64 — the reference the encrypted result is compared
with, and equal to the module's logits up to rounding (tested).

The maps are ``scipy.sparse`` CSR matrices: an unrolled convolution or pooling is mostly zeros, and a dense
composition of a full-size CNN would take gigabytes and a minute. Linear, logistic and batch-norm layers are read
from their parameters; other layers are probed with blocks of basis vectors, keeping only the non-zeros.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import sparse
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
_RESHAPES = (nn.Flatten, nn.Unflatten, nn.Dropout, nn.Identity)  # the identity on the flattened values (eval)
_FINAL_ONLY = (nn.Softmax, nn.LogSoftmax)
_PROBE_BLOCK = 512  # basis vectors per forward pass when probing a layer: bounds the dense intermediate


@dataclass(frozen=True)
class Affine:
    """``x -> x @ weight.T + bias`` on the flattened values; one multiplicative level.

    ``weight`` is stored as a canonical CSR matrix (float64, sorted column indices, no explicit zeros), whatever
    array or sparse matrix it is given as: the server iterates each row's non-zeros, in column order."""

    weight: sparse.csr_matrix  # (out, in) float64
    bias: np.ndarray  # (out,) float64

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", _canonical(self.weight))
        object.__setattr__(self, "bias", np.asarray(self.bias, dtype=np.float64))

    @property
    def nonzeros(self) -> int:
        return int(self.weight.nnz)


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
                h = np.asarray(step.weight @ h.T).T + step.bias
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
        self.pending: tuple[sparse.csr_matrix, np.ndarray] | None = None
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
            self.pending = (_canonical(weight @ w0), weight @ b0 + bias)

    def activation(self, path: str, a: float, b: float, c: float) -> None:
        if self.pending is None:  # an activation straight after another, or on the input
            d = math.prod(self.shape)
            carry, self.carry = (self.carry if self.carry is not None else np.zeros(d)), None
            self.pending = (sparse.identity(d, dtype=np.float64, format="csr"), carry)
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


def _canonical(weight: Any) -> sparse.csr_matrix:
    """``weight`` as a float64 CSR matrix with sorted indices, duplicates summed and explicit zeros dropped (so
    ``nnz`` counts the multiplications the server does)."""
    out = sparse.csr_matrix(weight, dtype=np.float64)
    out.sum_duplicates()  # also sorts the indices
    out.eliminate_zeros()
    return out


@torch.no_grad()
def _affine_of(layer: nn.Module, shape: tuple[int, ...]) -> tuple[sparse.csr_matrix, np.ndarray, tuple[int, ...]]:
    """``layer`` as a sparse (W, b) on the flattened input of ``shape``, and its output shape (one sample). Layers
    whose map is their parameters are read directly; any other is probed (:func:`_probe`)."""
    d = math.prod(shape)
    if isinstance(layer, LogisticModel):
        w, b = layer.affine()
        if layer.n_classes == 2:  # log-odds [0, z]
            w, b = torch.cat([torch.zeros_like(w), w]), torch.cat([torch.zeros_like(b), b])
        return _canonical(w.double().numpy()), b.double().numpy().copy(), (w.shape[0],)
    if isinstance(layer, nn.Linear) and shape == (layer.in_features,):
        out = layer.out_features
        bias = layer.bias.double().numpy().copy() if layer.bias is not None else np.zeros(out)
        return _canonical(layer.weight.double().numpy()), bias, (out,)
    if isinstance(layer, _RESHAPES):
        out_shape = tuple(layer(torch.zeros(1, *shape, dtype=torch.float64)).shape[1:])
        return sparse.identity(d, dtype=np.float64, format="csr"), np.zeros(d), out_shape
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)) and layer.running_var is not None and len(shape) > 0:
        var, mean = layer.running_var.double(), layer.running_mean.double()  # type: ignore[union-attr]
        gamma = layer.weight.double() if layer.weight is not None else torch.ones_like(var)
        beta = layer.bias.double() if layer.bias is not None else torch.zeros_like(var)
        scale = gamma / torch.sqrt(var + layer.eps)
        shift = beta - mean * scale
        per = math.prod(shape[1:])  # values per channel (channel-major, as torch flattens)
        diag = np.repeat(scale.numpy(), per)
        return _canonical(sparse.diags(diag, format="csr")), np.repeat(shift.numpy(), per), shape
    return _probe(layer, shape)


def _probe(layer: nn.Module, shape: tuple[int, ...]) -> tuple[sparse.csr_matrix, np.ndarray, tuple[int, ...]]:
    """Any affine ``layer`` from its float64 outputs: on zero (the bias) and on each basis vector (bias + one
    column of W), :data:`_PROBE_BLOCK` basis vectors per pass, each block's non-zeros kept as a sparse matrix."""
    d = math.prod(shape)
    layer = copy.deepcopy(layer).double()
    zero = layer(torch.zeros(1, *shape, dtype=torch.float64))
    out_shape = tuple(zero.shape[1:])
    bias = zero.reshape(-1)
    blocks = []
    probe = torch.zeros(min(_PROBE_BLOCK, d), d, dtype=torch.float64)  # one buffer, reused: its ones move along
    for start in range(0, d, len(probe)):
        n = min(len(probe), d - start)
        rows, cols = torch.arange(n), torch.arange(start, start + n)
        probe[rows, cols] = 1.0
        columns = layer(probe[:n].reshape(n, *shape)).reshape(n, -1) - bias  # row i: column start + i of W
        probe[rows, cols] = 0.0
        blocks.append(sparse.csr_matrix(columns.numpy()))
    return _canonical(sparse.vstack(blocks).T), bias.numpy().copy(), out_shape
