"""The sanitiser contract: a suspicion score per training record, the records to remove, the data that is kept.

Threat model: training-set poisoning (dirty-label backdoors such as BadNets). The defender holds the training
set, some of whose records an attacker controls, and the model trained on it; a sanitiser reads that model's
internal representation of every training record and names the records it believes poisoned, so the model can
be retrained without them. It sees no trigger and no clean reference data.

    san = get_sanitizer("clustering").fit(model, x_train, y_train)   # (N, *input_shape), (N,)
    san.scores_                        # (N,) float64, higher = more suspicious
    san.remove_                        # (N,) bool, the records to remove
    result = san.sanitize(model, data) # fits on data.x_train / data.y_train
    result.data                        # the kept training records; the test split is data's, untouched

:class:`Sanitizer` validates the model (it must declare the features capability,
:class:`~bastion.models.features.HasFeatures`) and the records, reads the activations of one layer (default: the
model's penultimate layer) and hands them, as (N, d) float64 on the CPU, to a subclass's :meth:`Sanitizer._fit`.
Fitted state ends with ``_``. Sanitisers are registered by name in :data:`SANITIZERS` (:func:`get_sanitizer`);
how well a set of removals matches the truth is :func:`bastion.metrics.detection_scores`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import torch
from torch import Tensor

from ...data.dataset import Dataset, index_mask
from ...errors import UsageError
from ...models.base import Classifier, validate_inputs
from ...models.features import HasFeatures, Pool
from ...registry import Configured, Registry

__all__ = ["SANITIZERS", "SanitizationResult", "Sanitizer", "check_seed", "get_sanitizer", "register_sanitizer"]


@dataclass
class SanitizationResult:
    """What :meth:`Sanitizer.sanitize` did to a dataset.

    Attributes:
        data: the dataset with only the kept training records (in their original order); the test split,
            bounds and classes are the input's.
        removed: (k,) int64 positions in the *input's* ``x_train`` of the removed records, increasing.
        scores: (N,) float64 suspicion score of every input training record (higher = more suspicious).
        method: the sanitiser's registered name. params: its configuration (``sanitizer.params()``).
        seconds: wall-clock time of the fit (features included).
        details: method-specific diagnostics per class (JSON-able), e.g. cluster sizes and silhouettes.
    """

    data: Dataset
    removed: Tensor
    scores: Tensor
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        """Training records before sanitisation."""
        return int(self.scores.numel())

    @property
    def n_removed(self) -> int:
        return int(self.removed.numel())

    @property
    def removed_mask(self) -> Tensor:
        """(N,) bool: True at the removed records (compare with ``PoisonedData.is_poisoned``)."""
        return index_mask(self.removed, self.n_train)

    @property
    def kept(self) -> Tensor:
        """(N - k,) int64 positions of the kept records in the input's ``x_train``."""
        return torch.nonzero(~self.removed_mask).flatten()

    def to_dict(self) -> dict[str, Any]:
        """One JSON-able record of the sanitisation (what ``bastion sanitize`` writes next to the kept data)."""
        return {
            "schema": "bastion.sanitize/1",
            "method": self.method,
            "params": dict(self.params),
            "data": self.data.name,
            "n_train": self.n_train,
            "n_removed": self.n_removed,
            "removed": self.removed.tolist(),
            "scores": self.scores.tolist(),
            "seconds": self.seconds,
            "details": self.details,
        }

    def __repr__(self) -> str:
        return f"SanitizationResult({self.method!r}, removed {self.n_removed} of {self.n_train} records)"


class Sanitizer(Configured):
    """Base class of training-set sanitisers.

    Subclasses set ``name`` (by :func:`register_sanitizer`) and implement :meth:`_fit`; everything else —
    validation, reading the features, building the kept dataset — is here.

    Args:
        layer: the layer whose activations are read (``"NAME"``: a module's output, ``"NAME:input"``: its
            input); default (``None``): the model's penultimate layer (the input of its last ``nn.Linear``).
        pool: how a (N, C, H, W) activation becomes (N, d): ``"flatten"`` (every value, default) or ``"avg"``
            (spatial mean). Penultimate activations are (N, d) already.
        batch_size: inputs per forward pass.
    """

    name: ClassVar[str] = "sanitizer"
    layer_: str | None

    def __init__(self, *, layer: str | None = None, pool: Pool = "flatten", batch_size: int = 500) -> None:
        if layer is not None and (not isinstance(layer, str) or not layer.strip()):
            raise UsageError(
                f"layer must be a module name such as '9:input' (or None for the penultimate), got {layer!r}"
            )
        if pool not in ("avg", "flatten"):
            raise UsageError(f"pool must be 'flatten' or 'avg', got {pool!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UsageError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.layer = layer
        self.pool: Pool = pool
        self.batch_size = batch_size

    # -- subclasses implement ----------------------------------------------------------------------
    def _fit(self, features: Tensor, y: Tensor, n_classes: int) -> tuple[Tensor, Tensor]:  # pragma: no cover
        """Scores (N,) float64 and the records to remove (N,) bool from ``features`` (N, d) float64 and labels."""
        raise NotImplementedError

    def _details(self) -> dict[str, Any]:
        """JSON-able per-class diagnostics of the last fit (default: none)."""
        return {}

    # -- public API --------------------------------------------------------------------------------
    def fit(self, model: Classifier, x: Tensor, y: Tensor) -> Self:
        """Score the training records ``x`` (N, *input_shape) with labels ``y`` (N,) of ``model``, trained on them.

        Reads the activations of ``layer`` and runs :meth:`fit_features` on them; sets ``layer_`` (the layer read)
        and ``seconds_`` (features included). Returns self. Refitting forgets the previous fit.
        """
        if not isinstance(model, Classifier):
            raise UsageError(f"a sanitiser needs a bastion Classifier, got {type(model).__name__}")
        if not isinstance(model, HasFeatures):
            raise UsageError(
                f"{type(self).__name__} reads the activations of a torch model: wrap the network in "
                f"bastion.models.TorchClassifier (got {type(model).__name__}, which declares no features capability)"
            )
        validate_inputs(model, x, y, name="training records")
        if x.shape[0] < 2:
            raise UsageError(f"sanitising needs at least 2 training records, got {x.shape[0]}")
        start = time.perf_counter()
        layer = self.layer if self.layer is not None else model.penultimate_layer
        feats = model.features(x.detach(), [layer], pool=self.pool, batch_size=self.batch_size)[0]
        self.fit_features(feats, y, n_classes=int(model.n_classes))
        self.layer_ = layer
        self.seconds_ = time.perf_counter() - start
        return self

    def fit_features(self, features: Tensor, y: Tensor, *, n_classes: int | None = None) -> Self:
        """Score records from their activations ``features`` (N, d) (or (N, ...), flattened) and labels ``y`` (N,)
        in [0, n_classes) (default: ``max(y) + 1``) — for a caller that already holds the activations, e.g. to run
        several sanitisers on one forward pass.

        Sets ``scores_`` (N,) float64, ``remove_`` (N,) bool, ``removed_per_class_`` (a count per class),
        ``seconds_`` (this step) and ``layer_ = None``; returns self.
        """
        if not isinstance(features, Tensor) or features.dim() < 2 or not features.is_floating_point():
            raise UsageError("features must be a floating-point tensor of shape (N, d), one row per record")
        if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != features.shape[0]:
            raise UsageError(f"labels must be integer class indices of shape ({features.shape[0]},)")
        if y.is_floating_point() or y.dtype == torch.bool:
            raise UsageError(f"labels must be integer class indices, got dtype {y.dtype}")
        if features.shape[0] < 2:
            raise UsageError(f"sanitising needs at least 2 training records, got {features.shape[0]}")
        labels = y.detach().to("cpu", torch.long)
        k = int(labels.max()) + 1 if n_classes is None else n_classes
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise UsageError(f"n_classes must be an integer >= 1, got {n_classes!r}")
        if int(labels.min()) < 0 or int(labels.max()) >= k:
            raise UsageError(f"labels must lie in [0, {k - 1}], got [{int(labels.min())}, {int(labels.max())}]")
        feats = features.detach().to("cpu", torch.float64).flatten(1)
        if not bool(torch.isfinite(feats).all()):
            raise UsageError("the activations contain NaN or infinite values: check the model and the layer")
        self._forget()
        start = time.perf_counter()
        scores, remove = self._fit(feats, labels, k)
        self.scores_, self.remove_ = scores, remove
        self.removed_per_class_ = [int(remove[labels == c].sum()) for c in range(k)]
        self.layer_ = None
        self.seconds_ = time.perf_counter() - start
        return self

    def sanitize(self, model: Classifier, data: Dataset) -> SanitizationResult:
        """Fit on ``data.x_train`` / ``data.y_train`` and return the data without the records to remove."""
        if not isinstance(data, Dataset):
            raise UsageError(f"sanitize needs a bastion Dataset, got {type(data).__name__}")
        self.fit(model, data.x_train, data.y_train)
        keep = ~self.remove_
        removed = torch.nonzero(self.remove_).flatten()
        idx = torch.nonzero(keep).flatten().to(data.x_train.device)
        kept = Dataset(
            data.name,
            data.x_train[idx],
            data.y_train[idx.to(data.y_train.device)],
            data.x_test,
            data.y_test,
            data.bounds,
            data.n_classes,
            data.feature_names,
            {**data.meta, "sanitized_by": self.name, "n_removed": int(removed.numel())},
        )
        return SanitizationResult(
            data=kept,
            removed=removed,
            scores=self.scores_,
            method=self.name,
            params=self.params(),
            seconds=self.seconds_,
            details={"layer": self.layer_, "removed_per_class": self.removed_per_class_, **self._details()},
        )

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "scores_")

    def _forget(self) -> None:
        for attr in [k for k in vars(self) if k.endswith("_") and not k.startswith("_")]:
            delattr(self, attr)

    # -- configuration -----------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """The constructor arguments, as given (for reports); a ``generator`` is left out, a callable named."""
        return {k: getattr(v, "__qualname__", repr(v)) if callable(v) else v for k, v in super().params().items()}


def finite_number(v: object) -> bool:
    """True for a finite int or float (not a bool): what a numeric constructor argument must be."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_seed(seed: object, generator: object = None) -> None:
    """Raise :class:`UsageError` unless ``seed`` is an integer or None and ``generator`` a ``torch.Generator`` or
    None: the two arguments a seeded defence (:func:`bastion.seeding.make_generator`) takes."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise UsageError(f"seed must be an integer or None, got {seed!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise UsageError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def per_class(y: Tensor, n_classes: int) -> list[Tensor]:
    """Positions (n_c,) of the records of each class 0..n_classes-1 (empty for a class without records)."""
    return [torch.nonzero(y == c).flatten() for c in range(n_classes)]


SANITIZERS: Registry[type[Sanitizer]] = Registry("sanitizer")
"""Training-set sanitisers by the name ``bastion sanitize --method`` and the audit resolve (``"spectral"``,
``"clustering"``). ``register_sanitizer(name)`` is the class decorator adding a sanitiser (a taken name is refused
unless ``replace=True``); ``get_sanitizer('spectral', expected_rate=0.1)`` builds one."""

register_sanitizer = SANITIZERS.named
get_sanitizer = SANITIZERS.create
