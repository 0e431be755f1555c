"""The one model interface every attack, defence, probe and service talks to.

A :class:`Classifier` maps a batch of inputs (N, *input_shape) inside ``bounds`` to scores
(N, n_classes). ``output`` says whether those scores are logits or probabilities;
``white_box`` says whether ``logits`` is differentiable with respect to its input. Every forward
sample is counted in ``n_queries`` (black-box attacks are judged by it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal, Protocol, Self, runtime_checkable

import torch
from torch import Tensor

from ..errors import UsageError

__all__ = ["BaseClassifier", "Classifier", "validate_inputs"]

Output = Literal["logits", "probabilities"]


@runtime_checkable
class Classifier(Protocol):
    """What bastion needs of a model.

    Attributes:
        n_classes: number of classes.
        input_shape: shape of one input, without the batch dimension.
        bounds: (low, high) of valid input values.
        output: 'logits' or 'probabilities' — what :meth:`logits` returns.
        white_box: True when :meth:`logits` is differentiable with respect to ``x``.
        n_queries: number of inputs passed through the model so far.
    """

    # read-only in the protocol: a wrapper (:class:`~bastion.models.wrapped.WrappedClassifier`) delegates them
    @property
    def n_classes(self) -> int: ...
    @property
    def input_shape(self) -> tuple[int, ...]: ...
    @property
    def bounds(self) -> tuple[float, float]: ...
    @property
    def output(self) -> Output: ...
    @property
    def white_box(self) -> bool: ...
    @property
    def n_queries(self) -> int: ...

    def logits(self, x: Tensor) -> Tensor:
        """Scores of shape (N, n_classes) for inputs of shape (N, *input_shape)."""
        ...

    def predict(self, x: Tensor) -> Tensor:
        """Predicted labels, shape (N,), int64."""
        ...

    def attack_mode(self) -> contextlib.AbstractContextManager[None]:
        """Context in which the model is deterministic (eval mode) and restored afterwards."""
        ...


def validate_inputs(
    model: Classifier, x: Tensor, y: Tensor | None = None, *, name: str = "x", check_bounds: bool = True
) -> None:
    """Raise :class:`UsageError` with a specific message if ``x`` / ``y`` do not fit ``model``."""
    if not isinstance(x, Tensor):
        raise UsageError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise UsageError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if isinstance(model, BaseClassifier) and x.dim() >= 2:
        model.learn_input_shape(tuple(x.shape[1:]))
    shape = tuple(model.input_shape)
    if x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != shape:
        raise UsageError(f"{name} has shape {tuple(x.shape)} but the model expects (N, {', '.join(map(str, shape))})")
    if not bool(torch.isfinite(x).all()):
        raise UsageError(f"{name} contains NaN or infinite values")
    if check_bounds and x.numel():
        lo, hi = model.bounds
        tol = 1e-5 * max(1.0, hi - lo)
        xmin, xmax = float(x.min()), float(x.max())
        if xmin < lo - tol or xmax > hi + tol:
            raise UsageError(
                f"{name} has values in [{xmin:.4g}, {xmax:.4g}] outside the model's bounds [{lo:g}, {hi:g}]: "
                "scale the data to the model's input range (normalisation belongs inside the model)"
            )
    if y is not None:
        if not isinstance(y, Tensor):
            raise UsageError(f"labels must be a torch.Tensor, got {type(y).__name__}")
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise UsageError(
                f"labels have shape {tuple(y.shape)} but {name} has {x.shape[0]} samples: expected ({x.shape[0]},)"
            )
        if y.is_floating_point() or y.dtype == torch.bool:
            raise UsageError(f"labels must be integer class indices, got dtype {y.dtype}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= model.n_classes):
            raise UsageError(f"labels must lie in [0, {model.n_classes - 1}], got [{int(y.min())}, {int(y.max())}]")


class Closing:
    """A resource that :meth:`close` releases, and a context manager that closes it on exit (``with obj: ...``)."""

    def close(self) -> None:  # pragma: no cover - abstract
        """Release what the object holds."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BaseClassifier:
    """Shared plumbing for adapters: attributes, query counting, ``predict`` and ``proba``.

    ``label_only`` is True for a model that answers with labels only (its scores are one-hot rows: a remote API
    that sends ``labels``): attacks that need probabilities (equation-solving extraction) refuse it.
    """

    output: Output = "logits"
    white_box: bool = False
    label_only: bool = False

    def __init__(
        self,
        *,
        n_classes: int,
        input_shape: tuple[int, ...],
        bounds: tuple[float, float] = (0.0, 1.0),
        output: Output = "logits",
    ) -> None:
        if int(n_classes) < 2:
            raise UsageError(f"n_classes must be at least 2, got {n_classes}")
        if output not in ("logits", "probabilities"):
            raise UsageError(f"output must be 'logits' or 'probabilities', got {output!r}")
        lo, hi = (float(b) for b in bounds)
        if not lo < hi:
            raise UsageError(f"bounds must be (low, high) with low < high, got {bounds!r}")
        self.n_classes = int(n_classes)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.bounds = (lo, hi)
        self.output = output
        self.n_queries = 0

    def learn_input_shape(self, shape: tuple[int, ...]) -> None:
        """Take the input shape from the first batch seen, for adapters built without one (a no-op here:
        the shape is known). :func:`validate_inputs` calls it before checking a batch."""

    # adapters implement this
    def _scores(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def queries_per_input(self) -> int:
        """Queries :meth:`logits` counts per input: 1, or the draws a wrapper averages over (EOT, smoothing)."""
        return 1

    def logits(self, x: Tensor) -> Tensor:
        """Scores (N, n_classes); counts N * :attr:`queries_per_input` queries."""
        self.n_queries += int(x.shape[0]) * self.queries_per_input
        return self._scores(x)

    __call__ = logits

    @torch.no_grad()
    def predict(self, x: Tensor, batch_size: int = 1024) -> Tensor:
        """Predicted labels (N,) computed in batches without gradients."""
        outs = [self.logits(x[i : i + batch_size]).argmax(dim=1) for i in range(0, x.shape[0], batch_size)]
        return torch.cat(outs) if outs else torch.empty(0, dtype=torch.long)

    @torch.no_grad()
    def proba(self, x: Tensor, batch_size: int = 1024) -> Tensor:
        """Class probabilities (N, n_classes)."""
        outs = []
        for i in range(0, x.shape[0], batch_size):
            s = self.logits(x[i : i + batch_size])
            outs.append(s if self.output == "probabilities" else torch.softmax(s, dim=1))
        return torch.cat(outs) if outs else torch.empty(0, self.n_classes)

    @contextlib.contextmanager
    def attack_mode(self) -> Iterator[None]:
        """Nothing to switch for stateless adapters."""
        yield

    def reset_queries(self) -> None:
        self.n_queries = 0

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n_classes={self.n_classes}, input_shape={self.input_shape}, "
            f"bounds={self.bounds}, output={self.output!r}, white_box={self.white_box})"
        )
