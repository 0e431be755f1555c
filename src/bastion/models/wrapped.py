"""Classifiers that wrap another classifier: delegation written once, the wrapped model named explicitly.

EOT (expectation over randomness), randomized smoothing, detection gates and, next, the poisoned,
private and encrypted wrappers are each a :class:`WrappedClassifier`: a Classifier in its own right, so
it can be attacked end to end, that *says* what it wraps (:attr:`WrappedClassifier.wrapped`). Code that
needs the model underneath asks for it with :func:`unwrap` or walks :func:`wrapper_chain`; nothing
recognises a wrapper by the names of its attributes.

What is delegated: ``n_classes``, ``input_shape``, ``bounds`` (read from the wrapped model every time,
so an adapter that learns its input shape on its first call is followed), ``white_box``, ``output``
(unless the wrapper fixes its own) and :meth:`attack_mode`. What is not: ``n_queries`` — every
wrapper counts the inputs sent to *it* (an EOT wrapper counts ``n_samples`` per input, the inner model
keeps its own count) — and :meth:`logits`, which a subclass defines through ``_scores`` (the default
passes the wrapped model's scores through).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import ClassVar

from torch import Tensor

from ..errors import UsageError
from .base import BaseClassifier, Classifier, Output

__all__ = ["WrappedClassifier", "averages_randomness", "unwrap", "wrapper_chain"]


class WrappedClassifier(BaseClassifier):
    """Base class of classifiers that wrap another :class:`~bastion.models.Classifier`.

    Args:
        wrapped: the classifier inside; it is not modified.
        output: what this wrapper's :meth:`logits` returns ('logits' or 'probabilities'); ``None``: the
            same as the wrapped model (read from it on every access).

    Class attributes subclasses set:
        scores_are_expectation: True when :meth:`logits` already averages over the model's randomness
            (EOT, smoothing), so the audit does not wrap it in EOT again.
    """

    scores_are_expectation: ClassVar[bool] = False

    def __init__(self, wrapped: Classifier, *, output: Output | None = None) -> None:
        if not isinstance(wrapped, Classifier):
            raise UsageError(
                f"{type(self).__name__} wraps a bastion Classifier (logits, predict, attack_mode, ...), "
                f"got {type(wrapped).__name__}: wrap a torch module with bastion.TorchClassifier first"
            )
        if output is not None and output not in ("logits", "probabilities"):
            raise UsageError(f"output must be 'logits' or 'probabilities', got {output!r}")
        self._wrapped = wrapped
        self._own_output = output
        self.n_queries = 0

    # -- what the wrapped model decides --------------------------------------------------------------
    @property
    def wrapped(self) -> Classifier:
        """The classifier this one wraps (one level down; :func:`unwrap` goes all the way)."""
        return self._wrapped

    @property
    def n_classes(self) -> int:  # type: ignore[override]
        return self._wrapped.n_classes

    @property
    def input_shape(self) -> tuple[int, ...]:  # type: ignore[override]
        return tuple(self._wrapped.input_shape)

    @property
    def bounds(self) -> tuple[float, float]:  # type: ignore[override]
        return self._wrapped.bounds

    @property
    def white_box(self) -> bool:  # type: ignore[override]
        return bool(self._wrapped.white_box)

    @property
    def output(self) -> Output:  # type: ignore[override]
        return self._own_output if self._own_output is not None else self._wrapped.output

    @property
    def label_only(self) -> bool:  # type: ignore[override]
        return isinstance(self._wrapped, BaseClassifier) and bool(self._wrapped.label_only)

    def learn_input_shape(self, shape: tuple[int, ...]) -> None:
        """Passed to the wrapped model (a torch adapter built without an input shape learns it here)."""
        if isinstance(self._wrapped, BaseClassifier):
            self._wrapped.learn_input_shape(shape)

    def _scores(self, x: Tensor) -> Tensor:
        return self._wrapped.logits(x)

    @contextlib.contextmanager
    def attack_mode(self) -> Iterator[None]:
        """The wrapped model's attack mode (eval)."""
        with self._wrapped.attack_mode():
            yield


def wrapper_chain(model: Classifier) -> list[Classifier]:
    """``[model, model.wrapped, ...]`` down to the first classifier that wraps nothing."""
    chain = [model]
    while isinstance(chain[-1], WrappedClassifier):
        inner = chain[-1].wrapped
        if any(inner is m for m in chain):  # pragma: no cover - a cycle cannot be built through the constructor
            raise UsageError("a wrapped classifier wraps itself")
        chain.append(inner)
    return chain


def unwrap(model: Classifier) -> Classifier:
    """The innermost classifier under any number of :class:`WrappedClassifier` layers (``model`` itself if none)."""
    return wrapper_chain(model)[-1]


def averages_randomness(model: Classifier) -> bool:
    """True when ``model`` is a wrapper whose scores already average over randomness (EOT, smoothing):
    attacking it through EOT again would only multiply the cost."""
    return isinstance(model, WrappedClassifier) and model.scores_are_expectation
