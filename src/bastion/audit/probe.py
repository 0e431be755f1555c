"""The probe contract: one threat, one measured result.

A probe is configured by a plain parameter mapping (from the profile, see :mod:`.profiles`), says
whether it applies to the model and data at hand (``skip_reason``), and ``run`` returns a
:class:`~.result.ProbeResult` with its parameters, metrics, plots, validity checks and examples.
New capabilities (poisoning, privacy, extraction, certification) add a probe with
:func:`register_probe`; the runner does not change.

Probes read everything from an :class:`AuditContext`: the model, the audited inputs, the threat
(norm and eps list), a seed, the results of the probes that ran before them (so checks can compare
black-box with white-box), and a ``progress`` callback for the CLI's bars.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from ..attacks.base import Attack, AttackResult
from ..data import Dataset
from ..errors import UsageError
from ..metrics import wilson_interval
from ..models.base import Classifier
from ..registry import Registry
from ..scale.executor import Executor, ShardStore
from ..threat import canonical_norm
from .result import Example, Plot, ProbeResult, Series

__all__ = [
    "PROBES",
    "AuditContext",
    "Probe",
    "eps_key",
    "examples_of",
    "norm_histogram",
    "pick_examples",
    "register_probe",
    "risk_from_ratio",
    "trigger_examples",
    "wilson_interval",
]


A = TypeVar("A", bound=Attack)
M = TypeVar("M")


def _typed(probe: str, key: str, default: Any, value: Any) -> Any:
    """``value`` of parameter ``key`` checked against, and stored as, the type of its ``default`` (see Probe)."""
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if isinstance(default, bool):
        ok, want = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, want = number and (isinstance(value, numbers.Integral) or float(value).is_integer()), "a whole number"
    elif isinstance(default, float):
        ok, want = number and abs(value) <= sys.float_info.max, "a finite number" if number else "a number"
    else:
        return value
    if not ok:
        raise UsageError(f"probe {probe!r}: {key} must be {want}, got {value!r}")
    return type(default)(value)


def eps_key(eps: float) -> str:
    """The eps part of a metric name: ``robust_accuracy@eps=0.1``."""
    return f"eps={eps:g}"


@dataclass
class AuditContext:
    """What every probe sees.

    Attributes:
        model: the audited Classifier. data: the whole dataset (training images for patches).
        x, y: the audited test inputs (the first ``n`` of the test split) and labels.
        norm, eps: the threat model: one norm, eps values in increasing order.
        seed: the audit's seed; :meth:`seed_for` derives a stable per-probe seed from it.
        kind: 'image' (C, H, W), 'tabular' (F,) or 'other'.
        results: results of the probes run so far, by name (also those resumed from disk).
        progress: ``progress(probe, fraction, message)``; never required.
        white_box_model: the model white-box probes attack (an EOT wrapper when the model is random).
        executor: where :meth:`run_attack` and the certification run their shards (default: this process; a
            :class:`~bastion.scale.RayExecutor` with ``--workers`` / ``--ray``). store: where finished shards are
            kept until their probe finishes (the runner sets it under the audit's state directory).
    """

    model: Classifier
    data: Dataset
    x: Tensor
    y: Tensor
    norm: str
    eps: list[float]
    seed: int
    kind: str
    results: dict[str, ProbeResult] = field(default_factory=dict)
    progress: Callable[[str, float, str], None] | None = None
    white_box_model: Classifier | None = None
    executor: Executor | None = None
    store: ShardStore | None = None
    _fractions: dict[str, float] = field(default_factory=dict, repr=False)

    def seed_for(self, name: str) -> int:
        digest = hashlib.sha256(f"{self.seed}:{name}".encode()).digest()
        return int.from_bytes(digest[:4], "little")

    def generator(self, name: str) -> torch.Generator:
        return torch.Generator(device=self.x.device).manual_seed(self.seed_for(name))

    def attack_at(self, attack: type[A], eps: float, **params: Any) -> A:
        """The attack class ``attack`` in the audit's norm at ``eps``, seeded for this audit and eps
        (:meth:`seed_for` of ``"NAME:eps=EPS"``, NAME its registered name); ``params`` are its others."""
        return attack(eps=eps, norm=self.norm, seed=self.seed_for(f"{attack.name}:{eps_key(eps)}"), **params)

    def run_attack(
        self, attack: Attack, model: Classifier, x: Tensor, y: Tensor, targets: Tensor | None = None, *, probe: str
    ) -> AttackResult:
        """``attack(model, x, y, targets)`` over shards of :data:`~bastion.scale.SHARD_SIZE` inputs on the audit's
        executor (shard k seeded from the attack's seed and k): the same result in this process or on Ray."""
        from ..scale import shard_attack

        at = self._fractions.get(probe, 0.0)

        def progress(done: int, total: int) -> None:
            if total > 1:
                self.report(probe, at, f"{attack.name}: shard {done}/{total}")

        return shard_attack(
            attack, model, x, y, targets, executor=self.executor, store=self.store, label=probe, progress=progress
        )

    def report(self, probe: str, fraction: float, message: str = "") -> None:
        self._fractions[probe] = fraction
        if self.progress is not None:
            self.progress(probe, min(max(float(fraction), 0.0), 1.0), message)

    @property
    def reference_eps(self) -> float:
        """The eps the risk verdicts are read at: the largest of the audit (the strongest attacker asked about)."""
        return self.eps[-1]

    @property
    def clean_correct(self) -> Tensor:
        with torch.no_grad():
            return self.model.predict(self.x) == self.y


class Probe:
    """Base class of audit probes.

    A subclass declares its identity — ``name`` (registry key), ``title`` and ``threat`` — as class keywords, and
    ``defaults`` (every parameter, with its default; the profile overrides some) in its body, and implements
    :meth:`run`::

        @register_probe
        class MarginProbe(Probe, name="margin", title="Logit margin", threat="evasion / margin"):
            # its docstring here: what it measures, how it decides risk and checks, each parameter of defaults
            defaults: ClassVar[dict[str, Any]] = {"quantile": 0.5}

    ``name``, ``title`` and ``threat`` set as class attributes in the body work the same (a keyword given as
    well takes precedence). :meth:`skip_reason` returns why the probe does not apply, or ``None``.

    The common requirements are declared, each by the skip reason given when it is not met, and the base
    :meth:`skip_reason` checks them in this order: ``needs_model`` (a classifier type and the reason: the
    defence the probe audits), ``needs_images`` (inputs (C, H, W)), ``needs_gradients`` (a white-box model),
    ``needs_lp_norm`` (an audit in linf or l2; ``{norm}`` in the reason stands for the audit's norm). A
    probe with more conditions extends :meth:`skip_reason`, calling it first.

    Parameters are typed by their defaults — ``bool``: True or False; ``int``: a whole number (``1000.0``, as TOML or
    JSON may give, is stored as ``1000``); ``float``: a finite number, stored as a float; the probe checks others —
    and a probe's own rules (ranges, names) go in :meth:`check_params`, which the constructor runs last.
    """

    name: ClassVar[str] = "probe"
    title: ClassVar[str] = "probe"
    threat: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    needs_model: ClassVar[tuple[type[Any], str] | None] = None
    needs_images: ClassVar[str | None] = None
    needs_gradients: ClassVar[str | None] = None
    needs_lp_norm: ClassVar[str | None] = None

    def __init_subclass__(
        cls, *, name: str | None = None, title: str | None = None, threat: str | None = None, **kw: Any
    ) -> None:
        """Set the identity given as class keywords (``class P(Probe, name=..., title=..., threat=...)``)."""
        super().__init_subclass__(**kw)
        if name is not None:
            cls.name = name
        if title is not None:
            cls.title = title
        if threat is not None:
            cls.threat = threat

    def __init__(self, **params: Any) -> None:
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise UsageError(
                f"probe {self.name!r}: unknown parameters {sorted(unknown)}; it takes {sorted(self.defaults)}"
            )
        self.params = {k: _typed(self.name, k, v, params.get(k, v)) for k, v in self.defaults.items()}
        self.check_params(self.params)

    def check_params(self, p: dict[str, Any]) -> None:
        """A probe's own checks of its typed ``self.params`` (UsageError), or their normalisation in place; run last."""

    def skip_reason(self, ctx: AuditContext) -> str | None:
        if self.needs_model is not None and not isinstance(ctx.model, self.needs_model[0]):
            return self.needs_model[1]
        if self.needs_images is not None and ctx.kind != "image":
            return self.needs_images
        if self.needs_gradients is not None and not ctx.model.white_box:
            return self.needs_gradients
        if self.needs_lp_norm is not None and canonical_norm(ctx.norm) not in ("linf", "l2"):
            return self.needs_lp_norm.format(norm=ctx.norm)
        return None

    def audited(self, ctx: AuditContext, cls: type[M]) -> M:
        """``ctx.model`` as the ``cls`` the probe audits (its ``needs_model``); run on another model, a
        :class:`UsageError` with the skip reason."""
        model = ctx.model
        if not isinstance(model, cls):
            raise UsageError(self.skip_reason(ctx) or f"probe {self.name!r} audits a {cls.__name__}")
        return model

    def run(self, ctx: AuditContext) -> ProbeResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def result(self, ctx: AuditContext, **fields: Any) -> ProbeResult:
        """A :class:`ProbeResult` pre-filled with this probe's identity, parameters and seed."""
        fields.setdefault("params", dict(self.params))
        return ProbeResult(
            probe=self.name, title=self.title, threat=self.threat, seed=ctx.seed_for(self.name), **fields
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.params.items())})"


class RetrainingProbe(Probe):
    """A probe that retrains the model's registered architecture (the ``arch`` parameter, else the model's own):
    it applies to such models and data with a training split that fits. ``retrains`` finishes the sentence "the
    model's architecture is not known, so ..."."""

    retrains: ClassVar[str] = "it cannot be retrained"

    def _arch(self, ctx: AuditContext) -> str | None:
        from ..models.torch import TorchClassifier

        arch = self.params["arch"]
        return ctx.model.arch if arch is None and isinstance(ctx.model, TorchClassifier) else arch

    @staticmethod
    def model_test_accuracy(ctx: AuditContext) -> float:
        """The audited model's accuracy on the data's test split (what a retrained model is compared with)."""
        with torch.no_grad():
            return float(ctx.model.predict(ctx.data.x_test).eq(ctx.data.y_test).double().mean())

    def skip_reason(self, ctx: AuditContext) -> str | None:
        from ..models.architectures import ARCHITECTURES

        arch = self._arch(ctx)
        if arch is None:
            return (
                f"the model's architecture is not known, so {self.retrains}: audit a zoo: or .safetensors model, "
                "or give the probe an arch (register yours with register_architecture)"
            )
        if arch not in ARCHITECTURES:
            return f"architecture {arch!r} is not registered (register it with register_architecture)"
        spec = ARCHITECTURES.get(arch)
        if ctx.data.x_train.shape[0] < 10:
            return f"the dataset has no training split, so {self.retrains}"
        if tuple(ctx.data.input_shape) != spec.input_shape or ctx.data.n_classes > spec.n_classes:
            return f"the data (inputs {ctx.data.input_shape}) do not fit architecture {arch!r} ({spec.input_shape})"
        return None


PROBES: Registry[type[Probe]] = Registry("probe")
"""Audit probes by name (``"whitebox"``, ``"blackbox"``, ...), the names profiles and ``--probes`` use."""


def register_probe(cls: type[Probe]) -> type[Probe]:
    """Class decorator: make a probe available to profiles and ``--probes`` by its ``name`` (a taken name is
    refused; ``PROBES.register(name, cls, replace=True)`` replaces one on purpose)."""
    return PROBES.register(cls.name, cls)


def risk_from_ratio(robust: float, clean: float) -> str:
    """Evasion risk from the share of clean accuracy an attacker leaves: < 50% high, < 90% medium, else low."""
    if not (math.isfinite(robust) and math.isfinite(clean)) or clean <= 0:
        return "n/a"
    ratio = robust / clean
    return "high" if ratio < 0.5 else "medium" if ratio < 0.9 else "low"


def examples_of(
    index: Sequence[int],
    y: Tensor,
    pred_clean: Tensor,
    pred_adv: Tensor,
    clean: Tensor,
    adversarial: Tensor,
    perturbation: Sequence[float],
    *,
    attack: str,
    norm: str,
    eps: float | None,
    bounds: tuple[float, float],
) -> list[Example]:
    """The gallery's :class:`Example` of each input ``index[j]`` (its index in the report): row ``j`` of the
    labels ``y``, the predictions, the ``clean`` and ``adversarial`` inputs and the ``perturbation`` sizes."""
    return [
        Example(
            index=int(i),
            label=int(y[j]),
            pred_clean=int(pred_clean[j]),
            pred_adv=int(pred_adv[j]),
            attack=attack,
            norm=norm,
            eps=eps,
            perturbation=float(perturbation[j]),
            clean=clean[j].tolist(),
            adversarial=adversarial[j].tolist(),
            bounds=bounds,
        )
        for j, i in enumerate(index)
    ]


def pick_examples(result: AttackResult, x: Tensor, pred_clean: Tensor, *, attack: str, k: int = 4) -> list[Example]:
    """Up to ``k`` successful examples of an attack's ``result`` on the inputs ``x`` (clean-correct inputs the
    attack flipped, first ones first), with the model's clean predictions ``pred_clean``; norm, eps and bounds
    are the result's threat model."""
    y, pred_adv, threat = result.y, result.pred_adv, result.threat
    rows = torch.nonzero(result.success & (pred_clean == y) & (pred_adv != pred_clean)).flatten()[:k]
    return examples_of(
        rows.tolist(),
        y[rows],
        pred_clean[rows],
        pred_adv[rows],
        x[rows],
        result.x_adv[rows],
        result.norms[rows].tolist(),
        attack=attack,
        norm=threat.norm,
        eps=threat.eps,
        bounds=threat.bounds,
    )


def trigger_examples(
    model: Classifier,
    index: Sequence[int],
    y: Tensor,
    clean: Tensor,
    stamped: Tensor,
    size: Callable[[Tensor], Tensor],
    *,
    attack: str,
    norm: str,
    bounds: tuple[float, float],
) -> list[Example]:
    """Examples of a trigger: the ``clean`` inputs (report indices ``index``, labels ``y``) and the same inputs
    ``stamped`` with it, as ``model`` classifies them in attack mode; the perturbation is ``size`` of the
    difference (stamped minus clean), per input."""
    with torch.no_grad(), model.attack_mode():
        pred, pred_t = model.predict(clean), model.predict(stamped)
    sizes = [float(size(stamped[j] - clean[j])) for j in range(len(index))]
    return examples_of(index, y, pred, pred_t, clean, stamped, sizes, attack=attack, norm=norm, eps=None, bounds=bounds)


def eps_curve(
    ctx: AuditContext, id: str, title: str, clean: float, curves: Mapping[str, list[float]], y_label: str
) -> Plot:
    """The audit's line plot of accuracy against eps (in the audit's norm, noted after ``title``): one series
    per curve, from ``clean`` accuracy at eps 0 through one value per eps of the audit."""
    return Plot(
        id=id,
        title=f"{title} ({ctx.norm})",
        kind="line",
        x_label=f"eps ({ctx.norm})",
        y_label=y_label,
        series=[Series(k, [0.0, *ctx.eps], [clean, *v]) for k, v in curves.items()],
    )


def norm_histogram(id: str, title: str, norm: str, series: list[Series]) -> Plot:
    """The audit's histogram of perturbation sizes per input in ``norm`` (noted after ``title``): each series'
    values are the sizes."""
    return Plot(id=id, title=f"{title} ({norm})", kind="hist", x_label=f"{norm} norm", y_label="inputs", series=series)
