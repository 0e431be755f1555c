"""The inner steps of adversarial training, registered in :data:`bastion.training.TRAINING_STEPS`.

- ``"pgd-at"`` (:class:`PGDAT`) — Madry et al. 2018: cross-entropy on PGD examples (random start, ``steps``
  steps of ``step_size``, default ``2.5 * eps / steps``).
- ``"trades"`` (:class:`TRADES`) — Zhang et al. 2019: cross-entropy on the clean batch + ``beta`` ·
  KL(f(x) ‖ f(x')), x' maximising that KL by PGD from x + 0.001·N(0, I).
- ``"fast-at"`` (:class:`FastAT`) — one FGSM step per example per epoch, from the example's perturbation of
  the previous epoch (``fast_init="prior"``, step eps/4; ATTA-1, Zheng et al. 2020) or from a uniform random
  start (``fast_init="random"``, step 1.25·eps; Wong, Rice & Kolter 2020).

Threat model: an ``norm`` ('linf' or 'l2') ball of radius ``eps`` within ``bounds``; ``eps_warmup`` epochs ramp
eps linearly from 0. The attack runs with the parameters frozen and the module in eval mode (a PGD step costs
a forward and an input-backward pass); the update runs in train mode.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...attacks.evasion.steps import ascent_direction, random_start
from ...errors import UsageError
from ...threat import ThreatModel, canonical_norm
from ...training.steps import TRAINING_STEPS, Batch, StepOutput, TrainingStep

__all__ = [
    "FAST_INITS",
    "PGDAT",
    "TRADES",
    "AdversarialStep",
    "FastAT",
    "pgd_examples",
    "radius",
    "trades_examples",
]

FAST_INITS = ("prior", "random")


def radius(threat: ThreatModel) -> float:
    """The threat model's eps (adversarial training needs a fixed budget)."""
    if threat.eps is None:
        raise UsageError("adversarial training needs a perturbation budget: give the threat model an eps")
    return float(threat.eps)


class _Frozen:
    """Parameters without gradients and the module in eval mode, for the attack steps; restored after."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __enter__(self) -> None:
        self.params = [(p, p.requires_grad) for p in self.module.parameters()]
        self.training = self.module.training
        for p, _ in self.params:
            p.requires_grad_(False)
        self.module.eval()

    def __exit__(self, *exc: object) -> None:
        for p, flag in self.params:
            p.requires_grad_(flag)
        self.module.train(self.training)


def pgd_examples(
    module: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    steps: int,
    alpha: float,
    generator: torch.Generator,
    *,
    random_init: bool = True,
    start: Tensor | None = None,
) -> Tensor:
    """PGD on the cross-entropy (Madry et al.), parameters frozen: forward + input-backward per step.

    Starts from ``start`` (projected into the threat model) when given, else from a uniform random point
    of the ball (``random_init``) or from ``x``."""
    eps = radius(threat)
    with _Frozen(module):
        if start is not None:
            x_adv = threat.project(x, start)
        else:
            x_adv = threat.project(x, random_start(x, threat.norm, eps, generator)) if random_init else x.clone()
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(module(x_adv), y, reduction="sum")
            (g,) = torch.autograd.grad(loss, x_adv)
            x_adv = threat.project(x, x_adv.detach() + alpha * ascent_direction(g, threat.norm))
    return x_adv.detach()


def trades_examples(
    module: nn.Module, x: Tensor, threat: ThreatModel, steps: int, alpha: float, generator: torch.Generator
) -> Tensor:
    """TRADES' inner maximisation: PGD on KL(f(x) || f(x')) from x + 0.001 N(0, 1)."""
    with _Frozen(module):
        p_clean = F.softmax(module(x), dim=1)
        x_adv = threat.project(x, x + 0.001 * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device))
        for _ in range(steps):
            x_adv.requires_grad_(True)
            kl = F.kl_div(F.log_softmax(module(x_adv), dim=1), p_clean, reduction="sum")
            (g,) = torch.autograd.grad(kl, x_adv)
            x_adv = threat.project(x, x_adv.detach() + alpha * ascent_direction(g, threat.norm))
    return x_adv.detach()


class AdversarialStep(TrainingStep):
    """Base of the adversarial steps: the threat model of each epoch (eps warm-up) and the inner step size.

    Args:
        eps, norm, bounds: the threat model trained against. steps: inner attack steps. step_size: the inner
            step (None: the step's default for the epoch's eps). eps_warmup: epochs over which eps ramps up.
    """

    def __init__(
        self,
        *,
        eps: float,
        norm: str = "linf",
        bounds: tuple[float, float] = (0.0, 1.0),
        steps: int = 10,
        step_size: float | None = None,
        eps_warmup: int = 0,
    ) -> None:
        self.eps, self.norm, self.bounds = eps, canonical_norm(norm), bounds
        self.steps, self.step_size, self.eps_warmup = steps, step_size, eps_warmup
        if self.norm not in ("linf", "l2"):
            raise UsageError(f"adversarial training supports linf and l2, not {norm}")
        for name, v, low in (("steps", steps, 1), ("eps_warmup", eps_warmup, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise UsageError(f"{name} must be an integer >= {low}, got {v!r}")
        if step_size is not None and not (isinstance(step_size, (int, float)) and step_size > 0):
            raise UsageError(f"step_size must be a number > 0 (or None for the default), got {step_size!r}")
        self.lr_scale = 1.0  # fast AT halves it on a restart; the step size follows it there
        self.start_epoch(0)

    def start_epoch(self, epoch: int) -> None:
        eps = self.eps * min(1.0, (epoch + 1) / self.eps_warmup) if self.eps_warmup else self.eps
        self.threat_ = ThreatModel(self.norm, eps, self.bounds)
        self.alpha_ = self.alpha(eps)

    def alpha(self, eps: float) -> float:
        """The inner step size at ``eps``."""
        return float(self.step_size) if self.step_size is not None else 2.5 * eps / self.steps

    def describe(self) -> dict[str, Any]:
        return {"eps": radius(self.threat_)}

    @classmethod
    def from_config(cls, config: Any, bounds: tuple[float, float]) -> AdversarialStep:
        """The step an :class:`~bastion.defenses.training.AdversarialTrainingConfig` describes."""
        return cls(
            eps=config.eps,
            norm=config.norm,
            bounds=bounds,
            steps=config.attack_steps,
            step_size=config.step_size,
            eps_warmup=config.eps_warmup,
            **{k: getattr(config, k) for k in cls._extra},
        )

    def __repr__(self) -> str:
        names = ("eps", "norm", "bounds", "steps", "step_size", "eps_warmup", *self._extra)
        return f"{type(self).__name__}({', '.join(f'{k}={getattr(self, k)!r}' for k in names)})"

    _extra: tuple[str, ...] = ()


@TRAINING_STEPS.register("pgd-at")
class PGDAT(AdversarialStep):
    """PGD adversarial training (Madry et al. 2018): the cross-entropy of PGD examples."""

    name = "pgd-at"

    def __call__(self, module: nn.Module, batch: Batch, generator: torch.Generator, epoch: int) -> StepOutput:
        x_adv = pgd_examples(module, batch.x, batch.y, self.threat_, self.steps, self.alpha_, generator)
        return x_adv, batch.y


@TRAINING_STEPS.register("trades")
class TRADES(AdversarialStep):
    """TRADES (Zhang et al. 2019): CE(f(x), y) + beta · KL(f(x) ‖ f(x')), x' from :func:`trades_examples`."""

    name = "trades"
    _extra = ("beta",)

    def __init__(self, *, beta: float = 6.0, **threat: Any) -> None:
        super().__init__(**threat)
        self.beta = beta

    def __call__(self, module: nn.Module, batch: Batch, generator: torch.Generator, epoch: int) -> StepOutput:
        x_adv = trades_examples(module, batch.x, self.threat_, self.steps, self.alpha_, generator)
        logits = module(batch.x)
        kl = F.kl_div(F.log_softmax(module(x_adv), dim=1), F.softmax(logits, dim=1), reduction="batchmean")
        return F.cross_entropy(logits, batch.y) + self.beta * kl


@TRAINING_STEPS.register("fast-at")
class FastAT(AdversarialStep):
    """Fast adversarial training: one FGSM step per example per epoch, from the example's previous perturbation
    (``fast_init="prior"``: one input-sized tensor per training example, uniform in the ball before the first
    epoch; kept in checkpoints) or from a uniform random start (``fast_init="random"``)."""

    name = "fast-at"
    _extra = ("fast_init",)

    def __init__(self, *, fast_init: str = "prior", **threat: Any) -> None:
        if fast_init not in FAST_INITS:
            raise UsageError(f"fast_init must be one of {', '.join(FAST_INITS)}, got {fast_init!r}")
        self.fast_init = fast_init
        self.prior: Tensor | None = None
        super().__init__(**threat)

    def alpha(self, eps: float) -> float:
        if self.step_size is not None:
            base = float(self.step_size)
        else:
            base = 0.25 * eps if self.fast_init == "prior" else 1.25 * eps
        return base * self.lr_scale

    def setup(self, x: Tensor, y: Tensor, generator: torch.Generator) -> None:
        self.prior = random_start(x, self.norm, self.eps, generator) - x if self.fast_init == "prior" else None

    def __call__(self, module: nn.Module, batch: Batch, generator: torch.Generator, epoch: int) -> StepOutput:
        xb, yb, idx = batch.x, batch.y, batch.index
        if self.prior is None:  # Wong et al.: FGSM from a uniform random start, projected back into the ball
            return pgd_examples(module, xb, yb, self.threat_, 1, self.alpha_, generator), yb
        x_adv = pgd_examples(module, xb, yb, self.threat_, 1, self.alpha_, generator, start=xb + self.prior[idx])
        self.prior[idx] = x_adv - xb
        return x_adv, yb

    def state_dict(self) -> dict[str, Any]:
        return {"lr_scale": self.lr_scale, **({"prior": self.prior} if self.prior is not None else {})}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.lr_scale = float(state.get("lr_scale", 1.0))
        prior = state.get("prior")
        self.prior = prior.to(self.prior.device) if prior is not None and self.prior is not None else prior
