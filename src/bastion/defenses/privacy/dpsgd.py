"""DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy") through Opacus, on the one trainer.

Every example's gradient is clipped to ``max_grad_norm``, the clipped gradients are summed, Gaussian noise of
standard deviation ``noise_multiplier * max_grad_norm`` is added and the sum is divided by the expected batch size
(Opacus' ``GradSampleModule`` and ``DPOptimizer``). Batches are **Poisson** samples (every record joins each step
independently with probability ``q = 1 / ceil(N / batch_size)``, as Opacus' ``DPDataLoader``), which is what the
accountant's epsilon assumes. The noise comes from a target ``(epsilon, delta)`` over ``epochs`` (Opacus'
``PrivacyEngine.make_private_with_epsilon``, accountant ``prv`` by default, ``rdp`` or ``gdp``) or a fixed
``noise_multiplier``; every optimizer step is recorded by the accountant, and the epsilon actually spent is
read back from it after every epoch and at the end.

The loop is :class:`bastion.training.Trainer` (the same record, progress and ``checkpoint=PATH`` resume as the
other defences): the DP optimizer is its optimizer and the Poisson sampler its sampler; the accountant's history
travels in the checkpoint, so a resumed run reports the epsilon of the whole run.

``secure=True``: Opacus' ``secure_mode`` needs ``torchcsprng`` (which has no build for current torch); without it
the noise and the Poisson sampling are drawn from the operating system's CSPRNG (``os.urandom``) with Opacus'
defence against floating-point attacks (the sum of four Gaussians; Holohan & Braghin 2021), and the record says so.

Layers that mix examples (BatchNorm) make per-example clipping meaningless: :func:`dp_fix` replaces them with
GroupNorm (Opacus' ``ModuleValidator.fix``) and says what it replaced; ``fix=False`` refuses them instead.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import UsageError
from ...training import Callback, Trainer
from .sampling import PoissonSampler, secure_optimizer

__all__ = [
    "ACCOUNTANTS",
    "DP_CONFIGS",
    "DPConfig",
    "DPTraining",
    "PoissonSampler",
    "dp_config_for",
    "dp_fix",
    "dp_train",
    "dp_train_architecture",
]

ACCOUNTANTS = ("prv", "rdp", "gdp")


@dataclass(frozen=True)
class DPConfig:
    """A DP-SGD recipe.

    Args:
        epsilon: the target epsilon over the whole run (the noise multiplier is chosen to spend it); ``None`` with
            ``noise_multiplier`` set.
        delta: the target delta; it must be below ``1 / N`` (N training records).
        max_grad_norm: the per-example clipping norm C.
        noise_multiplier: a fixed sigma instead of a target epsilon (0 = clipping without noise: the same recipe
            with no privacy, the control of an audit).
        epochs, batch_size: passes over the data and the *expected* (Poisson) batch size.
        lr, momentum, optimizer: ``"sgd"`` (the DP-SGD of the paper) or ``"adam"``.
        accountant: ``prv`` (Gopi et al. 2021), ``rdp`` (Mironov 2017) or ``gdp``.
        secure: cryptographically strong noise and sampling (see the module docstring).
    """

    epsilon: float | None = 3.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    noise_multiplier: float | None = None
    epochs: int = 15
    batch_size: int = 256
    lr: float = 1.0
    momentum: float = 0.0
    optimizer: str = "sgd"
    accountant: str = "prv"
    secure: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.epsilon is None) == (self.noise_multiplier is None):
            raise UsageError("DP-SGD needs exactly one of a target epsilon or a fixed noise multiplier")
        if self.epsilon is not None and not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise UsageError(f"--epsilon must be a finite number > 0, got {self.epsilon!r}")
        if self.noise_multiplier is not None and not (
            math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0
        ):
            raise UsageError(f"the noise multiplier must be a finite number >= 0, got {self.noise_multiplier!r}")
        if not 0 < self.delta < 1:
            raise UsageError(f"--delta must be in (0, 1) and below 1/N, got {self.delta!r}")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise UsageError(f"--max-grad-norm must be a finite number > 0, got {self.max_grad_norm!r}")
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be a whole number >= 1, got {v!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UsageError(f"--lr must be a finite number > 0, got {self.lr!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise UsageError(f"the DP optimizer must be sgd or adam, got {self.optimizer!r}")
        if self.accountant not in ACCOUNTANTS:
            raise UsageError(f"--accountant: choose one of {', '.join(ACCOUNTANTS)}, got {self.accountant!r}")


DP_CONFIGS: dict[str, DPConfig] = {
    # measured on their data sets (docs/benchmarks.md, "Differential privacy"): Adam on clipped, noised gradients.
    # Adam rather than SGD: with the noise call missing, SGD at C = 1 barely memorises a canary (the audit's bound
    # stayed near 0.5 on digits), Adam's does (2.6) -- a broken training under this recipe is caught
    "mnist-cnn": DPConfig(epochs=15, batch_size=256, lr=2e-3, optimizer="adam"),
    "digits-mlp": DPConfig(epochs=30, batch_size=64, lr=5e-3, optimizer="adam"),
    "cancer-mlp": DPConfig(epochs=40, batch_size=64, lr=5e-3, optimizer="adam"),
}
"""The DP-SGD recipe per architecture (what ``bastion harden --defense dp-sgd`` starts from)."""


def dp_config_for(arch: str | None, **overrides: Any) -> DPConfig:
    """The recipe of ``arch`` (default :class:`DPConfig`) with the ``overrides`` that are not ``None``."""
    base = DP_CONFIGS.get(str(arch), DPConfig())
    given = {k: v for k, v in overrides.items() if v is not None}
    if "noise_multiplier" in given:
        given.setdefault("epsilon", None)
    return replace(base, **given)


def dp_fix(module: nn.Module, *, fix: bool = True, log: Callable[[str], None] | None = None) -> nn.Module:
    """``module`` made trainable by DP-SGD: unchanged when Opacus accepts it; else (``fix``) a copy with the layers
    Opacus cannot handle replaced (BatchNorm -> GroupNorm), saying what was replaced, or a :class:`UsageError`."""
    try:
        from opacus.validators import ModuleValidator
    except ImportError:
        raise UsageError("DP-SGD needs Opacus: pip install 'bastion[dp]'") from None

    errors = ModuleValidator.validate(module, strict=False)
    if not errors:
        return module
    what = "; ".join(sorted({str(e).splitlines()[0] for e in errors}))
    if not fix:
        raise UsageError(
            f"DP-SGD cannot train this model as it is ({what}): per-example gradients need layers that do not mix "
            "the examples of a batch; replace BatchNorm with GroupNorm (opacus.validators.ModuleValidator.fix)"
        )
    fixed = ModuleValidator.fix(copy.deepcopy(module))
    left = ModuleValidator.validate(fixed, strict=False)
    if left:
        raise UsageError(f"DP-SGD cannot train this model: {'; '.join(str(e) for e in left)}")
    if log is not None:
        log(f"replaced for DP-SGD: {what} (BatchNorm -> GroupNorm; the architecture changed)")
    return fixed


def _dp_loss(logits: Tensor, y: Tensor) -> Tensor:
    # an empty Poisson batch still takes a (pure-noise) step: its loss is 0, not the NaN of a mean over nothing
    return F.cross_entropy(logits, y) if y.numel() else logits.sum() * 0.0


class _Accounting(Callback):
    """Writes the epsilon spent so far into every epoch's record entry; carries the accountant in checkpoints."""

    def __init__(self, accountant: Any, delta: float, track: bool) -> None:
        self.accountant, self.delta, self.track = accountant, delta, track

    def end_epoch(self, trainer: Trainer, entry: dict[str, Any]) -> str:
        if not self.track:  # the PRV accountant takes ~0.3 s per call: only when someone watches the epochs
            return "continue"
        entry["epsilon"] = _spent(self.accountant, self.delta)
        return "continue"

    def state_dict(self) -> dict[str, Any]:
        return {"history": [list(h) for h in self.accountant.history]}

    def load_state_dict(self, state: Any) -> None:
        self.accountant.history = [tuple(h) for h in state["history"]]


def _spent(accountant: Any, delta: float) -> float | None:
    """The epsilon the accountant has recorded (``None``: infinite, no noise)."""
    if not accountant.history:
        return 0.0
    if any(h[0] == 0 for h in accountant.history):
        return None
    with warnings.catch_warnings():  # at huge noise RDP's best order is its largest: the bound is still valid
        warnings.filterwarnings("ignore", message="Optimal order is the")
        return float(accountant.get_epsilon(delta))


@dataclass
class DPTraining:
    """What :func:`dp_train` returns: the trained plain module (hooks removed, eval mode) and the record, whose
    top level has ``epsilon`` (spent; ``None`` = no noise, no guarantee), ``delta``, ``noise_multiplier``,
    ``max_grad_norm``, ``sample_rate``, ``steps``, ``accountant`` and ``secure_rng``."""

    module: nn.Module
    record: dict[str, Any]


def _engine(config: DPConfig, log: Callable[[str], None] | None) -> tuple[Any, str | None]:
    from opacus import PrivacyEngine

    if config.secure:
        try:
            import torchcsprng  # noqa: F401

            return PrivacyEngine(accountant=config.accountant, secure_mode=True), "torchcsprng"
        except ImportError:
            if log is not None:
                log(
                    "--secure: torchcsprng is not installed (no build for this torch); noise and sampling from os.urandom"
                )
    with warnings.catch_warnings():  # "secure RNG turned off": the record's secure_rng says so instead
        warnings.simplefilter("ignore")
        return PrivacyEngine(accountant=config.accountant), "os.urandom" if config.secure else None


def _make_private(
    module: nn.Module,
    config: DPConfig,
    n: int,
    x: Tensor,
    y: Tensor,
    generator: torch.Generator,
    log: Callable[[str], None] | None,
) -> tuple[Any, Any, Any, str | None]:
    """Opacus' module, optimizer and privacy engine for the recipe."""
    engine, secure_rng = _engine(config, log)
    params = list(module.parameters())
    base: torch.optim.Optimizer = (
        torch.optim.SGD(params, lr=config.lr, momentum=config.momentum)
        if config.optimizer == "sgd"
        else torch.optim.Adam(params, lr=config.lr)
    )
    # the loader only tells Opacus N and the batch size (sample rate 1/len(loader)); the trainer samples itself
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=config.batch_size)
    common = {
        "module": module,
        "optimizer": base,
        "data_loader": loader,
        "max_grad_norm": config.max_grad_norm,
        "poisson_sampling": True,
        "noise_generator": None if secure_rng else generator,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus warns about its own DataLoader, which is not used
        try:
            if config.epsilon is not None:
                gsm, opt, _ = engine.make_private_with_epsilon(
                    target_epsilon=config.epsilon, target_delta=config.delta, epochs=config.epochs, **common
                )
            else:
                gsm, opt, _ = engine.make_private(noise_multiplier=config.noise_multiplier, **common)
        except ValueError as exc:
            steps = math.ceil(n / config.batch_size)
            raise UsageError(
                f"--epsilon {config.epsilon:g} cannot be reached at delta {config.delta:g} in {config.epochs} epochs "
                f"of {steps} steps ({exc}): raise --epsilon or --delta, or train fewer epochs"
            ) from None
    if secure_rng == "os.urandom":
        secure_optimizer(opt)
    return gsm, opt, engine, secure_rng


def dp_train(
    module: nn.Module,
    x: Tensor,
    y: Tensor,
    config: DPConfig,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    fix: bool = True,
    log: Callable[[str], None] | None = None,
    verbose: bool = False,
) -> DPTraining:
    """Train ``module`` with DP-SGD on ``(x, y)`` (N records) by the recipe ``config``.

    The module is trained in place (a copy when :func:`dp_fix` had to replace layers). Refused with one line: a
    delta not below 1/N, a target epsilon the accountant cannot reach in the given epochs, layers DP cannot train
    (``fix=False``). ``on_epoch(entry)`` after every epoch (its ``epsilon`` is the budget spent so far; computed
    only with ``on_epoch`` or ``verbose``, as the PRV accountant costs ~0.3 s a call)."""
    n = int(x.shape[0])
    if config.delta >= 1.0 / n:
        suggestion = 10.0 ** math.floor(math.log10(0.1 / n))
        raise UsageError(
            f"--delta {config.delta:g} is not below 1/N = 1/{n}: a delta that large allows publishing a whole "
            f"record; use --delta {suggestion:g} or smaller"
        )
    module = dp_fix(module, fix=fix, log=log)
    device = next(module.parameters()).device
    generator = torch.Generator(device).manual_seed(int(config.seed))
    gsm, opt, engine, secure_rng = _make_private(module, config, n, x, y, generator, log)
    sampler = PoissonSampler(n, config.batch_size, secure=secure_rng is not None)
    settings = {
        "defense": "dp-sgd",
        **asdict(config),
        "noise_multiplier": float(opt.noise_multiplier),
        "epsilon_target": config.epsilon,
        "sample_rate": sampler.sample_rate,
        "steps_per_epoch": sampler.steps,
        "n": n,
        "secure_rng": secure_rng,
    }
    trainer = Trainer(
        gsm,
        epochs=config.epochs,
        batch_size=config.batch_size,
        optimizer=opt,
        loss=_dp_loss,
        generator=generator,
        sampler=sampler,
        callbacks=[_Accounting(engine.accountant, config.delta, track=on_epoch is not None or verbose)],
        checkpoint=checkpoint,
        settings=settings,
        on_epoch=on_epoch,
        verbose=verbose,
    )
    try:
        with warnings.catch_warnings():
            # Opacus' backward hooks fire on outputs (inputs need no gradient); RDP's alpha range at huge noise
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            warnings.filterwarnings("ignore", message="Optimal order is the")
            record = trainer.fit(x, y)
    finally:
        plain = gsm.to_standard_module()
        for p in plain.parameters():
            p.grad = None
    plain.eval()
    record.update(
        {
            "epsilon": _spent(engine.accountant, config.delta),
            "delta": config.delta,
            "noise_multiplier": settings["noise_multiplier"],
            "max_grad_norm": config.max_grad_norm,
            "sample_rate": sampler.sample_rate,
            "steps": sum(int(h[2]) for h in engine.accountant.history),
            "accountant": config.accountant,
            "secure_rng": secure_rng,
        }
    )
    return DPTraining(plain, record)


def dp_train_architecture(
    arch: str,
    x: Tensor,
    y: Tensor,
    config: DPConfig,
    **options: Any,
) -> DPTraining:
    """A registered architecture initialised with ``config.seed`` (the caller's RNG untouched), then
    :func:`dp_train` ``options``."""
    from ...models.architectures import build_architecture

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(config.seed))
        module, spec = build_architecture(arch)
    if tuple(x.shape[1:]) != tuple(spec.input_shape):
        raise UsageError(f"architecture {arch!r} takes inputs of shape {spec.input_shape}, got {tuple(x.shape[1:])}")
    return dp_train(module, x, y, config, **options)
