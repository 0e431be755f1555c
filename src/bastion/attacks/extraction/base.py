"""The extraction contract: ``attack.extract(victim, budget) -> ExtractionResult``.

An extraction attack steals a copy of a classifier it can only query: through ``logits`` / ``predict`` (and its
shape, classes, bounds, ``output``, ``label_only``), never its weights or gradients — a local model, a served one
(:class:`~bastion.models.RemoteClassifier`) and a label-only API are attacked alike.

``queries`` in the result is exact: the victim's own ``n_queries`` counter before and after the attack (inputs
sent, not requests), and never more than ``budget``. With held-out ``eval_x`` (and ``eval_y``) ``curve`` has one
:class:`CurvePoint` per checkpoint: queries spent, the copy's **fidelity** (argmax agreement with the victim,
:func:`bastion.metrics.fidelity`, Jagielski et al. 2020) and accuracy. The victim's answers on the held-out inputs
are asked once, before the attack, outside ``queries`` (``extra["eval_queries"]``, ``extra["victim_accuracy"]``).

Randomness comes from one ``torch.Generator`` (``generator=``, or one seeded with ``seed``), never the global RNG.
Attacks are registered by their CLI name in :data:`EXTRACTION_ATTACKS`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ... import metrics
from ...errors import UsageError
from ...models.base import BaseClassifier, Classifier, validate_inputs
from ...models.torch import TorchClassifier
from ...registry import Configured, Registry
from ...seeding import draw_seed, make_generator
from ...training import Batch, Trainer, TrainingStep
from .copies import build_copy, default_copy_arch

__all__ = [
    "EXTRACTION_ATTACKS",
    "CurvePoint",
    "ExtractionAttack",
    "ExtractionResult",
    "SoftTargets",
    "build_copy",
    "default_copy_arch",
    "get_extraction_attack",
    "is_label_only",
    "query_victim",
    "register_extraction",
    "train_copy",
]


class CurvePoint(NamedTuple):
    """One point of an extraction curve: ``queries`` spent so far, the copy's ``fidelity`` to the victim and its
    ``accuracy`` (nan without labels) on the held-out inputs."""

    queries: int
    fidelity: float
    accuracy: float


@dataclass(frozen=True)
class ExtractionResult:
    """What an extraction attack returns.

    Attributes:
        stolen: the copy, a white-box :class:`~bastion.models.TorchClassifier` with the victim's input shape, classes
            and bounds (``stolen.arch`` names its registered architecture when it has one).
        queries: inputs sent to the victim (its ``n_queries`` delta), at most the budget.
        curve: one :class:`CurvePoint` per checkpoint when held-out inputs were given, else empty.
        seconds: wall time of the attack. extra: attack-specific details (JSON-able).
    """

    stolen: TorchClassifier
    queries: int
    curve: list[CurvePoint]
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def fidelity(self) -> float:
        """Fidelity at the last checkpoint (nan without held-out inputs)."""
        return self.curve[-1].fidelity if self.curve else math.nan

    @property
    def accuracy(self) -> float:
        """The copy's held-out accuracy at the last checkpoint (nan without labels)."""
        return self.curve[-1].accuracy if self.curve else math.nan

    def summary(self) -> dict[str, Any]:
        return {
            "fidelity": self.fidelity,
            "accuracy": self.accuracy,
            "queries": self.queries,
            "seconds": self.seconds,
            "curve": [p._asdict() for p in self.curve],
        }


def is_label_only(model: Classifier) -> bool:
    """True when ``model`` answers with labels only (a remote API that sends ``labels``; known after its first
    answer)."""
    return isinstance(model, BaseClassifier) and bool(model.label_only)


@torch.no_grad()
def query_victim(model: Classifier, x: Tensor, *, labels_only: bool = False, batch_size: int = 256) -> Tensor:
    """The victim's answer on ``x`` as probabilities (N, n_classes), float32: its probabilities (softmax of its
    logits), or one-hot rows of its labels (``labels_only``, or a label-only victim). Exactly N queries."""
    rows = []
    for i in range(0, x.shape[0], batch_size):
        scores = model.logits(x[i : i + batch_size]).detach().float()
        if labels_only or is_label_only(model):
            rows.append(F.one_hot(scores.argmax(1), model.n_classes).float())
        else:
            rows.append(scores if model.output == "probabilities" else torch.softmax(scores, dim=1))
    return torch.cat(rows) if rows else x.new_zeros(0, model.n_classes)


class SoftTargets(TrainingStep):
    """A step of the one trainer that fits the victim's answers: cross-entropy against soft targets
    ``targets[index]`` (N, n_classes) — the knockoff's loss (Orekondy et al. 2019, eq. 1), hard-label
    cross-entropy when the rows are one-hot. Train with ``y = arange(N)``: the labels index the targets."""

    name: ClassVar[str] = "soft-targets"

    def __init__(self, targets: Tensor) -> None:
        self.targets = targets

    def __call__(self, module: nn.Module, batch: Batch, generator: torch.Generator, epoch: int) -> Tensor:
        return soft_cross_entropy(module(batch.x), self.targets[batch.index])


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over the batch of ``-sum_k targets_k log softmax(logits)_k``."""
    return -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()


def train_copy(
    module: nn.Module,
    x: Tensor,
    targets: Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
) -> nn.Module:
    """Train ``module`` in place on the transfer set ``(x, targets)`` with the one trainer (Adam, soft
    cross-entropy, shuffled by a generator seeded from ``generator``); returns it in eval mode."""
    seed = draw_seed(generator)
    with torch.enable_grad():
        Trainer(module, epochs=epochs, batch_size=batch_size, lr=lr, step=SoftTargets(targets), seed=seed).fit(
            x, torch.arange(x.shape[0])
        )
    return module.eval()


class Evaluation:
    """The held-out inputs and the victim's answers on them, asked once: :meth:`point` measures a copy."""

    def __init__(self, victim: Classifier, x: Tensor | None, y: Tensor | None) -> None:
        self.x, self.y = x, y
        self.victim_pred = victim.predict(x) if x is not None else None
        self.points: list[CurvePoint] = []

    def point(self, stolen: Classifier, queries: int) -> None:
        """Measure ``stolen`` at ``queries`` spent and add it to the curve (nothing without held-out inputs)."""
        if self.x is None or self.victim_pred is None:
            return
        pred = stolen.predict(self.x)
        acc = metrics.accuracy(pred, self.y) if self.y is not None else math.nan
        self.points.append(CurvePoint(int(queries), metrics.fidelity(pred, self.victim_pred), acc))


@dataclass(kw_only=True, eq=False, repr=False)
class ExtractionAttack(Configured):
    """Base class of extraction attacks.

    Attacks are keyword-only dataclasses (like the evasion and poisoning attacks): a subclass declares its own
    parameters as fields with the paper's defaults and validates them in ``__post_init__`` (calling
    ``super().__post_init__()``), and implements :meth:`_extract`. :meth:`extract` validates the call, asks the
    victim for its answers on the held-out inputs, counts the queries and times the attack.

    Args:
        seed: seeds the attack's generator when ``generator`` is not given.
        generator: a ``torch.Generator`` to draw from (shared state: the caller's sequence continues).
    """

    name: ClassVar[str] = "extraction"
    needs_probabilities: ClassVar[bool] = False  # equation solving: a label-only victim is refused
    takes_checkpoints: ClassVar[bool] = True  # the curve's points can be chosen (knockoff); else the attack's own

    seed: int | None = 0
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise UsageError(f"seed must be an integer or None, got {self.seed!r}")

    def _check_numbers(self, *, whole: Sequence[str] = (), positive: Sequence[str] = ()) -> None:
        """Raise :class:`UsageError` naming the first parameter among ``whole`` that is not a whole number >= 1 or
        among ``positive`` that is not a finite number > 0."""
        for name in whole:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UsageError(f"{name} must be a whole number >= 1, got {v!r}")
        for name in positive:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise UsageError(f"{name} must be a number > 0, got {v!r}")

    # -- subclasses implement --------------------------------------------------------------------
    def _extract(
        self, model: Classifier, budget: int, checkpoints: list[int], evaluation: Evaluation, generator: torch.Generator
    ) -> tuple[TorchClassifier, dict[str, Any]]:  # pragma: no cover - abstract
        """Steal ``model`` with at most ``budget`` queries; call ``evaluation.point(copy, queries)`` at each
        checkpoint. Returns the copy and the attack's details."""
        raise NotImplementedError

    def min_budget(self, model: Classifier) -> int:
        """The fewest queries the attack can work with on ``model`` (default 1)."""
        return 1

    # -- public API --------------------------------------------------------------------------------
    def extract(
        self,
        model: Classifier,
        budget: int,
        *,
        eval_x: Tensor | None = None,
        eval_y: Tensor | None = None,
        checkpoints: Sequence[int] | None = None,
    ) -> ExtractionResult:
        """Steal ``model`` with at most ``budget`` queries.

        Args:
            model: the victim, any :class:`~bastion.models.Classifier` (queried only).
            budget: the most inputs the attack may send to the victim.
            eval_x, eval_y: held-out inputs (N, *input_shape) and labels (N,) to measure the copy on; their
                victim answers are not counted in ``queries``.
            checkpoints: query counts at which the copy is (re)trained and measured, increasing, each <= budget
                (the budget is always the last); attacks whose curve follows their own rounds (Jacobian
                augmentation) refuse it.
        """
        points = self.check(model, budget, checkpoints)
        if eval_x is not None:
            validate_inputs(model, eval_x, eval_y, name="eval_x")
        elif eval_y is not None:
            raise UsageError("eval_y needs eval_x: the held-out inputs the labels belong to")
        g = make_generator(self.seed, self.generator)
        start = time.perf_counter()
        with model.attack_mode():
            before_eval = model.n_queries
            evaluation = Evaluation(model, eval_x, eval_y)
            self._check_victim(model)  # a remote API's first answers say whether it sends labels only
            before = model.n_queries
            stolen, extra = self._extract(model, budget, points, evaluation, g)
            queries = model.n_queries - before
        if queries > budget:  # pragma: no cover - a bug in an attack
            raise AssertionError(f"{type(self).__name__} sent {queries} queries, over its budget of {budget}")
        extra = {"eval_queries": before - before_eval, **extra}
        if evaluation.victim_pred is not None and eval_y is not None:
            extra["victim_accuracy"] = metrics.accuracy(evaluation.victim_pred, eval_y)
        return ExtractionResult(stolen, queries, evaluation.points, time.perf_counter() - start, extra)

    def check(self, model: Classifier, budget: int, checkpoints: Sequence[int] | None = None) -> list[int]:
        """Raise :class:`UsageError` if this attack cannot run on ``model`` with ``budget`` (before any query: the
        victim's answers, the budget against the attack's minimum and its pool, the checkpoints); returns the
        checkpoints :meth:`extract` will use."""
        if not isinstance(model, Classifier):
            raise UsageError(f"extract needs a bastion Classifier as the victim, got {type(model).__name__}")
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise UsageError(f"the query budget must be a whole number >= 1, got {budget!r}")
        self._check_victim(model)
        need = self.min_budget(model)
        if budget < need:
            raise UsageError(f"{self.name} needs at least {need} queries on this model, the budget is {budget}")
        self._check_inputs(model, budget)
        return self._checkpoints(budget, checkpoints)

    def _check_inputs(self, model: Classifier, budget: int) -> None:
        """Subclasses check their own inputs (a pool, a seed set) against the victim and the budget."""

    def _check_victim(self, model: Classifier) -> None:
        if self.needs_probabilities and is_label_only(model):
            raise UsageError(
                f"{self.name} needs the victim's probabilities but it answers with labels only: "
                "use knockoff with labels_only=True (bastion steal --attack knockoff --labels-only) or jacobian"
            )

    def _checkpoints(self, budget: int, checkpoints: Sequence[int] | None) -> list[int]:
        if checkpoints is None:
            return [budget]
        if not self.takes_checkpoints:
            raise UsageError(f"{self.name} records a curve point after each of its own rounds: drop checkpoints=")
        points = list(checkpoints)
        if any(isinstance(c, bool) or not isinstance(c, int) for c in points) or points != sorted(set(points)):
            raise UsageError(f"checkpoints must be increasing whole numbers, got {checkpoints!r}")
        if points and (points[0] < 1 or points[-1] > budget):
            raise UsageError(f"checkpoints must lie in [1, {budget}] (the budget), got {checkpoints!r}")
        return points if points and points[-1] == budget else [*points, budget]

    @staticmethod
    def _param_repr(value: Any) -> str:
        """A tensor (a pool, a seed set) is shown by its shape in ``repr``."""
        return f"<tensor {tuple(value.shape)}>" if isinstance(value, Tensor) else repr(value)


EXTRACTION_ATTACKS: Registry[type[ExtractionAttack]] = Registry("extraction attack")
"""Extraction attacks by the name ``bastion steal --attack`` resolves (``"knockoff"``, ...).
``register_extraction(name)`` is the class decorator adding an extraction attack (a taken name is refused unless
``replace=True``); ``get_extraction_attack('knockoff', pool=x)`` builds one."""

register_extraction = EXTRACTION_ATTACKS.named
get_extraction_attack = EXTRACTION_ATTACKS.create
