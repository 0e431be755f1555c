"""The attack contract: configured at construction, called on a batch, pure w.r.t. the model.

``attack(model, x, y, targets=None) -> AttackResult``. :class:`Attack.__call__` validates the
inputs, puts the model in attack mode (eval) and restores it, splits the batch, calls the
subclass's :meth:`Attack._attack`, then **projects every result onto the eps-ball and the bounds**
and measures per-sample success. Subclasses only write the optimisation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

import torch
from torch import Tensor

from .. import metrics
from ..errors import UsageError
from ..models.base import Classifier, validate_inputs
from ..registry import Configured, Registry
from ..seeding import make_generator
from ..threat import ThreatModel, canonical_norm

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackBatch",
    "AttackResult",
    "Budget",
    "MinimumNormAttack",
    "get_attack",
    "is_adversarial",
    "positive",
    "register",
]


@dataclass
class Budget:
    """Counts of backward passes (per input sample) made by an attack, and attack-specific details
    (``extra``, copied into :attr:`AttackResult.extra`, and ``per_sample`` tensors, one per batch)."""

    forward: int = 0
    backward: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    per_sample: dict[str, list[Tensor]] = field(default_factory=dict)

    def add_per_sample(self, key: str, values: Tensor) -> None:
        """Record one batch's per-sample values (e.g. queries to success); concatenated over batches
        into ``AttackResult.extra[key]`` in input order."""
        self.per_sample.setdefault(key, []).append(values.detach())


@dataclass
class AttackResult:
    """What an attack returns.

    Attributes:
        x_adv: adversarial inputs, same shape as ``x``, inside the threat model.
        success: (N,) bool — misclassified (untargeted) or classified as the target (targeted).
        y: true labels; ``targets``: target labels or None.
        pred_adv: (N,) predicted labels on ``x_adv``.
        clean_correct: (N,) bool — the model was right on the clean input.
        norms: (N,) perturbation norms of ``x_adv - x`` in ``threat.norm``.
        queries: forward samples passed through the model; ``gradients``: backward samples.
        seconds: wall time.
        threat: the threat model the result was projected onto.
        extra: attack-specific details (per-member robust accuracy for ensembles, ...).
    """

    x_adv: Tensor
    success: Tensor
    y: Tensor
    pred_adv: Tensor
    clean_correct: Tensor
    norms: Tensor
    queries: int
    gradients: int
    seconds: float
    threat: ThreatModel
    targets: Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def clean_accuracy(self) -> float:
        """Fraction of inputs classified correctly before the attack."""
        return float(self.clean_correct.double().mean()) if self.y.numel() else float("nan")  # as metrics does

    @property
    def robust_accuracy(self) -> float:
        """Fraction of inputs still classified correctly after the attack."""
        return metrics.robust_accuracy(self.pred_adv, self.y)

    @property
    def success_rate(self) -> float:
        """Fraction of the clean-correct inputs the attack succeeded on."""
        return metrics.attack_success_rate(self.success, self.clean_correct)

    @property
    def median_perturbation(self) -> float:
        """Median perturbation norm over the successful, clean-correct inputs (nan if none)."""
        mask = self.success & self.clean_correct
        return float(self.norms[mask].median()) if bool(mask.any()) else float("nan")

    def summary(self) -> dict[str, float | int]:
        return {
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "success_rate": self.success_rate,
            "median_perturbation": self.median_perturbation,
            "queries": self.queries,
            "seconds": self.seconds,
        }


def is_adversarial(scores: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
    """Per-sample success criterion from model scores."""
    pred = scores.argmax(dim=1)
    return pred == targets if targets is not None else pred != y


ATTACKS: Registry[type[Attack]] = Registry("attack")
"""Evasion attacks by the name the CLI and the audit resolve (``"pgd"``, ``"square"``, ...). ``register(name)`` is
the class decorator adding an attack (a taken name is refused unless ``replace=True``); ``get_attack('pgd',
eps=0.3)`` builds one."""

register = ATTACKS.named
get_attack = ATTACKS.create


@dataclass(frozen=True)
class AttackBatch:
    """One batch of an attack call, as :meth:`Attack._attack` receives it.

    Attributes:
        model: the classifier, already in attack mode. x: inputs (n, *input_shape). y: labels (n,).
        targets: target labels (n,), or None (untargeted). threat: the threat model the result is projected
        onto. generator: the attack's random generator. budget: where backward passes and details are counted.
    """

    model: Classifier
    x: Tensor
    y: Tensor
    targets: Tensor | None
    threat: ThreatModel
    generator: torch.Generator
    budget: Budget

    def rows(self, idx: Tensor) -> AttackBatch:
        """The same call restricted to the samples ``idx`` (indices or a boolean mask): inputs, labels and
        targets are selected; model, threat model, generator and budget are shared."""
        t = self.targets[idx] if self.targets is not None else None
        return replace(self, x=self.x[idx], y=self.y[idx], targets=t)

    def is_adversarial(self, scores: Tensor) -> Tensor:
        """(n,) bool: the scores (n, n_classes) of this batch's samples meet the attack's goal."""
        return is_adversarial(scores, self.y, self.targets)


_POSITIVE = "bastion.positive"  # the dataclass field metadata :func:`positive` sets: (integer, allow_zero)


def positive(default: Any, *, integer: bool = False, allow_zero: bool = False) -> Any:
    """An attack parameter (a dataclass field with this default) that must be a number > 0 (>= 0 with
    ``allow_zero``), a whole number when ``integer``. :meth:`Attack.__post_init__` checks it — one
    :class:`UsageError` naming the parameter — and stores it as an int (``integer``) or a float. A parameter
    whose default is None may also be None (unset)."""
    return field(default=default, metadata={_POSITIVE: (integer, allow_zero)})


@dataclass(kw_only=True, eq=False, repr=False)
class Attack(Configured):
    """Base class of evasion attacks.

    Attacks are keyword-only dataclasses, like the poisoning attacks: a subclass declares only its own
    parameters as fields (with the paper's defaults; it may redeclare ``eps`` or ``norm`` to change their
    default), declares numbers that must be positive with :func:`positive` and validates anything else in
    ``__post_init__``, calling ``super().__post_init__()`` first, so the signature, :meth:`params` and
    ``repr`` show the full configuration and every check is made in one place. Subclasses set ``norms`` (supported
    norms), ``needs_gradients`` and implement ``_attack(batch: AttackBatch) -> x_adv`` on one batch, with
    the model already in attack mode. They may return points outside the threat model; the base class
    projects.

    Args:
        eps: the perturbation budget (``None`` only for minimum-norm attacks). norm: 'linf', 'l2' or 'l1'.
        batch_size: inputs attacked per internal batch.
        generator: a ``torch.Generator`` to draw from (shared state); ``seed`` seeds a new one otherwise.
    """

    name: ClassVar[str] = "attack"
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")
    needs_gradients: ClassVar[bool] = True
    minimum_norm: ClassVar[bool] = False  # eps optional (C&W, DeepFool)
    supports_targets: ClassVar[bool] = True  # False: untargeted only (DeepFool)

    eps: float | None = 0.3
    norm: str = "linf"
    batch_size: int = 1000
    generator: torch.Generator | None = None
    seed: int | None = 0

    def __post_init__(self) -> None:
        self.norm = canonical_norm(self.norm)
        if self.norm not in self.norms:
            raise UsageError(f"{type(self).__name__} supports the norms {', '.join(self.norms)}, not {self.norm!r}")
        eps = self.eps
        if eps is None and not self.minimum_norm:
            raise UsageError(f"{type(self).__name__} needs eps (the perturbation budget)")
        if eps is not None:
            if not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
                raise UsageError(f"eps must be a finite number >= 0, got {eps!r}")
            self.eps = float(eps)
        if int(self.batch_size) < 1:
            raise UsageError(f"batch_size must be >= 1, got {self.batch_size}")
        self.batch_size = int(self.batch_size)
        for f in fields(self):
            check, value = f.metadata.get(_POSITIVE), getattr(self, f.name)
            if check is None or (value is None and f.default is None):
                continue
            integer, allow_zero = check
            self._positive(f.name, value, integer=integer, allow_zero=allow_zero)
            setattr(self, f.name, int(value) if integer else float(value))

    @property
    def radius(self) -> float:
        """``eps`` of an attack with a fixed budget (set: only minimum-norm attacks may have none)."""
        if self.eps is None:
            raise UsageError(f"{type(self).__name__} needs eps (the perturbation budget)")
        return self.eps

    # -- helpers for subclasses ---------------------------------------------------------
    @staticmethod
    def _positive(name: str, value: float, *, integer: bool = False, allow_zero: bool = False) -> None:
        ok = (value >= 0 if allow_zero else value > 0) and math.isfinite(value)
        if integer:
            ok = ok and float(value).is_integer()
        if not ok:
            kind = "an integer" if integer else "a number"
            raise UsageError(f"{name} must be {kind} {'>=' if allow_zero else '>'} 0, got {value!r}")

    def _make_generator(self, device: torch.device) -> torch.Generator:
        return make_generator(self.seed, self.generator, device)

    def _attack(self, batch: AttackBatch) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_model(self, model: Classifier) -> None:
        """Refuse a model this attack cannot run on (called by :meth:`__call__` after the inputs are checked):
        by default, a black-box model for an attack that needs gradients."""
        if self.needs_gradients and not model.white_box:
            raise UsageError(
                f"{type(self).__name__} needs gradients but {type(model).__name__} is a black-box model: "
                "use a query-based attack instead"
            )

    def _finish(self, result: AttackResult) -> AttackResult:
        """The result as the attack reports it (by default as measured; a subclass may refine ``success``)."""
        return result

    def __call__(
        self,
        model: Classifier,
        x: Tensor,
        y: Tensor,
        targets: Tensor | None = None,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> AttackResult:
        """Attack the batch ``x`` (N, *input_shape) with labels ``y`` (N,).

        Passing ``targets`` (N,) makes the attack targeted: success means ``pred == targets``.
        ``progress(done, total)`` is called after each internal batch (the CLI draws a bar with it).
        """
        validate_inputs(model, x, y)
        if targets is not None:
            if not self.supports_targets:
                raise UsageError(
                    f"{type(self).__name__} is untargeted: call it without targets "
                    "(use 'cw', 'pgd' or 'apgd-t' for targeted attacks)"
                )
            validate_inputs(model, x, targets)
            if bool((targets == y).any()):
                raise UsageError("targets must differ from the true labels for every sample")
        self._check_model(model)
        threat = ThreatModel(self.norm, self.eps, model.bounds)
        x = x.detach()
        y = y.to(x.device)
        targets = targets.to(x.device) if targets is not None else None
        generator = self._make_generator(x.device)
        budget = Budget()
        q0 = model.n_queries
        start = time.perf_counter()
        with model.attack_mode():
            advs = []
            for i in range(0, x.shape[0], self.batch_size):
                sl = slice(i, i + self.batch_size)
                xb, yb = x[sl], y[sl]
                tb = targets[sl] if targets is not None else None
                adv = self._attack(AttackBatch(model, xb, yb, tb, threat, generator, budget)).detach()
                advs.append(threat.project(xb, adv))
                if progress is not None:
                    progress(min(i + self.batch_size, x.shape[0]), x.shape[0])
            x_adv = torch.cat(advs) if advs else x.clone()
            attack_queries = model.n_queries - q0
            with torch.no_grad():
                pred_clean = model.predict(x)
                pred_adv = model.predict(x_adv)
        seconds = time.perf_counter() - start
        success = pred_adv == targets if targets is not None else pred_adv != y
        clean_correct = pred_clean == y
        if targets is None:
            # an input the model already gets wrong needs no perturbation: report it unperturbed
            keep = ~clean_correct
            if bool(keep.any()):
                x_adv = torch.where(keep.view(-1, *([1] * (x.dim() - 1))), x, x_adv)
                pred_adv = torch.where(keep, pred_clean, pred_adv)
                success = success | keep
        return self._finish(
            AttackResult(
                x_adv=x_adv,
                success=success,
                y=y,
                pred_adv=pred_adv,
                clean_correct=clean_correct,
                norms=threat.norms(x, x_adv),
                queries=attack_queries,
                gradients=budget.backward,
                seconds=seconds,
                threat=threat,
                targets=targets,
                extra={**budget.extra, **{k: torch.cat(v) for k, v in budget.per_sample.items()}},
            )
        )


@dataclass(kw_only=True, eq=False, repr=False)
class MinimumNormAttack(Attack):
    """Base of minimum-norm attacks (Foolbox's ``MinimizationAttack``): they look for the smallest perturbation
    that fools the model (C&W, DeepFool, HopSkipJump, Boundary, SimBA, patches), so ``eps`` is optional —
    ``None`` (the default) bounds the result by the input range only; a given eps makes the library project
    the result onto that ball. L2 unless a subclass says otherwise."""

    minimum_norm = True

    eps: float | None = None
    norm: str = "l2"
