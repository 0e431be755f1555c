"""Adversarial training: train on the attacker's inputs.

- ``pgd-at`` — Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks":
  minimise the cross-entropy on PGD examples (random start, ``attack_steps`` steps of ``step_size``).
- ``trades`` — Zhang et al. 2019, "Theoretically Principled Trade-off between Robustness and Accuracy":
  cross-entropy on clean inputs + ``beta`` · KL(f(x) ‖ f(x')), x' maximising that KL by PGD from a
  small Gaussian start.
- ``fast-at`` — fast adversarial training: one FGSM step per example per epoch (a forward and an
  input-backward, like a 1-step PGD), from one of two starts (``fast_init``):

  * ``"prior"`` (the default): the example's own adversarial perturbation from the previous epoch,
    kept for every training example (one input-sized tensor per example; uniform random in the ball
    before the first epoch), step ``eps / 4``. The perturbation accumulates over epochs, so late
    epochs train on a many-step attack at one step's cost — ATTA-1 of Zheng et al. 2020 ("Efficient
    Adversarial Training with Transferable Adversarial Examples"), the epoch prior (FGSM-EP) of Jia
    et al. 2022 ("Prior-Guided Adversarial Initialization for Fast Adversarial Training"), without
    the latter's regulariser (it cost robustness on MNIST, measured in docs/benchmarks.md).
  * ``"random"``: Wong, Rice & Kolter 2020, "Fast is better than free": a uniform random start and
    a step of ``1.25 · eps``.

  Its failure mode, catastrophic overfitting (PGD accuracy collapses within an epoch while FGSM
  accuracy soars), is checked after every epoch on a held-out batch of the training split: on a
  collapse the weights of the best epoch are restored and training stops (``on_overfit="stop"``) or
  restarts that epoch with half the step and learning rate (``"restart"``).

Threat model: ``norm`` ('linf' or 'l2') ball of radius ``eps`` within the model's bounds. Inputs
(N, *input_shape). The attack steps run with the parameters frozen (``requires_grad_(False)``), so a
PGD step costs a forward and an input-backward pass only, and in eval mode; the update runs in train
mode. ``eps_warmup`` epochs ramp eps linearly from 0 (customary on MNIST at eps = 0.3).

Progress: after every epoch, clean and PGD-``eval_steps`` accuracy on ``val_size`` training inputs held
out from training (the test split is never touched). Checkpoint (``checkpoint=PATH``): model,
optimizer, generator state, the step's per-example prior, the overfitting guard's best epoch and the record
after every epoch, written atomically with ``torch.save`` of tensors and plain values only, read back with
``torch.load(weights_only=True)``; the same call resumes after the last finished epoch, and refuses a
checkpoint of other settings.

The loop is :class:`bastion.training.Trainer`; the inner steps are registered by name in
:data:`bastion.training.TRAINING_STEPS` (:mod:`.steps`), the held-out monitor and the overfitting guard are
in :mod:`.monitor`. This module maps an :class:`AdversarialTrainingConfig` onto them.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...data.dataset import Dataset
from ...errors import UsageError
from ...models.base import validate_inputs
from ...models.torch import TorchClassifier
from ...threat import ThreatModel, canonical_norm
from ...training import TRAINING_STEPS, Trainer, split_holdout
from .monitor import OverfitGuard, RobustHeldOut
from .steps import FAST_INITS, AdversarialStep, pgd_examples

__all__ = [
    "DEFENSES",
    "FAST_INITS",
    "LR_SCHEDULES",
    "AdversarialTrainingConfig",
    "adversarial_defenses",
    "adversarial_train",
    "pgd_examples",
]

LR_SCHEDULES = ("constant", "cosine", "cyclic")


def adversarial_defenses() -> tuple[str, ...]:
    """The names of the registered adversarial-training steps (``pgd-at``, ``trades``, ``fast-at``, plug-ins)."""
    return tuple(n for n, s in TRAINING_STEPS.items() if isinstance(s, type) and issubclass(s, AdversarialStep))


DEFENSES = adversarial_defenses()  # the built-in ones, at import


@dataclass(frozen=True)
class AdversarialTrainingConfig:
    """Every setting of an adversarial training run (recorded in the model file and the record).

    Args:
        defense: 'pgd-at', 'trades' or 'fast-at'. eps, norm: the threat model trained against.
        epochs, batch_size, lr, optimizer ('adam' or 'sgd', momentum 0.9), weight_decay: the optimisation.
        attack_steps, step_size: the inner attack (PGD-AT, TRADES); ``step_size=None``: 2.5·eps/steps
            (Madry); for fast-at eps/4 from the prior start, 1.25·eps from the random one (Wong).
        lr_schedule: 'constant' (``lr`` throughout), 'cosine' (``lr`` decayed to 0 along a half cosine
            over the run, updated every step) or 'cyclic' (Wong et al.'s triangle: 0 to ``lr`` over the
            first 40% of the steps, back to 0 at the end).
        fast_init: fast-at's start, 'prior' (the example's perturbation from the previous epoch) or
            'random' (uniform in the ball, Wong et al.).
        beta: TRADES' robustness weight. eps_warmup: epochs over which eps ramps up linearly.
        val_size, eval_steps: held-out training inputs and PGD steps for the per-epoch accuracies.
        holdout: keep those ``val_size`` inputs out of training (the default: the per-epoch numbers then
            measure generalisation). False trains on every input and monitors ``val_size`` of them
            (the per-epoch numbers then measure fit, as in Wong et al.'s overfitting check on a
            training batch): for comparing with a trainer that uses the whole training split.
        overfit_drop: fast-at's collapse criterion — held-out PGD accuracy falling by more than this
            below its best; on_overfit: 'stop' or 'restart'.
        seed: initialisation (``from_scratch``), shuffling, random starts.
    """

    defense: str = "pgd-at"
    eps: float = 0.3
    norm: str = "linf"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    attack_steps: int = 10
    step_size: float | None = None
    beta: float = 6.0
    eps_warmup: int = 0
    val_size: int = 256
    holdout: bool = True
    eval_steps: int = 20
    overfit_drop: float = 0.2
    on_overfit: str = "stop"
    fast_init: str = "prior"
    lr_schedule: str = "constant"
    seed: int = 0

    def __post_init__(self) -> None:
        step = TRAINING_STEPS.get(self.defense)  # an unknown name: the registry's "did you mean" error
        if not issubclass(step, AdversarialStep):
            raise UsageError(
                f"defense {self.defense!r} is not adversarial training: choose one of {', '.join(adversarial_defenses())}"
            )
        object.__setattr__(self, "defense", TRAINING_STEPS.canonical(self.defense))
        norm = canonical_norm(self.norm)
        if norm not in ("linf", "l2"):
            raise UsageError(f"adversarial training supports linf and l2, not {self.norm}")
        object.__setattr__(self, "norm", norm)
        for name in ("epochs", "batch_size", "attack_steps", "val_size", "eval_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UsageError(f"{name} must be an integer >= 1, got {v!r}")
        for name in ("eps", "lr", "beta"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise UsageError(f"{name} must be a number > 0, got {v!r}")
        if self.step_size is not None and not (math.isfinite(self.step_size) and self.step_size > 0):
            raise UsageError(f"step_size must be > 0, got {self.step_size!r}")
        if not (isinstance(self.eps_warmup, int) and 0 <= self.eps_warmup <= self.epochs):
            raise UsageError(f"eps_warmup must be an integer in [0, epochs], got {self.eps_warmup!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise UsageError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise UsageError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.fast_init not in FAST_INITS:
            raise UsageError(f"fast_init must be one of {', '.join(FAST_INITS)}, got {self.fast_init!r}")
        if self.on_overfit not in ("stop", "restart"):
            raise UsageError(f"on_overfit must be 'stop' or 'restart', got {self.on_overfit!r}")
        if not isinstance(self.holdout, bool):
            raise UsageError(f"holdout must be True or False, got {self.holdout!r}")
        if not 0 < self.overfit_drop < 1 or self.weight_decay < 0:
            raise UsageError("overfit_drop must lie in (0, 1) and weight_decay be >= 0")

    def lr_at(self, progress: float) -> float:
        """The learning rate at ``progress`` (0 at the first step, 1 after the last) of the run."""
        if self.lr_schedule == "cosine":
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
        if self.lr_schedule == "cyclic":
            return self.lr * (progress / 0.4 if progress < 0.4 else max(0.0, (1.0 - progress) / 0.6))
        return self.lr

    def alpha(self, eps: float) -> float:
        """The inner attack's step size at ``eps`` (the step's own default when ``step_size`` is None)."""
        return self.make_step((0.0, 1.0)).alpha(eps)

    def make_step(self, bounds: tuple[float, float]) -> AdversarialStep:
        """The registered inner step this configuration describes, for inputs within ``bounds``."""
        step = TRAINING_STEPS.get(self.defense)
        assert issubclass(step, AdversarialStep)  # checked in __post_init__
        return step.from_config(self, bounds)


def _trainable_copy(
    model: TorchClassifier, data: Dataset, config: AdversarialTrainingConfig, from_scratch: bool
) -> nn.Module:
    """A copy of the model's module, checked against ``data``, re-initialised if asked, every parameter trainable."""
    if not isinstance(model, TorchClassifier):
        raise UsageError(f"adversarial training needs a torch model (TorchClassifier), got {type(model).__name__}")
    validate_inputs(model, data.x_train[:2], data.y_train[:2], name="the training data")
    n_total = int(data.x_train.shape[0])
    if config.holdout and n_total <= config.val_size + config.batch_size // 2:
        raise UsageError(
            f"the training split has {n_total} inputs: too few for val_size={config.val_size} "
            f"held out and batches of {config.batch_size}"
        )
    module = copy.deepcopy(model.module)
    if from_scratch:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            for m in module.modules():
                reset = getattr(m, "reset_parameters", None)
                if callable(reset):
                    reset()
    for p in module.parameters():
        p.requires_grad_(True)
    return module


def _optimizer(config: AdversarialTrainingConfig) -> Callable[[list[nn.Parameter]], torch.optim.Optimizer]:
    if config.optimizer == "adam":
        return lambda ps: torch.optim.Adam(ps, lr=config.lr, weight_decay=config.weight_decay)
    return lambda ps: torch.optim.SGD(ps, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)


def _finish(record: dict[str, Any]) -> dict[str, Any]:
    """The record's ``final`` entry: the last epoch kept (not collapsed; the restored one after a stop)."""
    record.setdefault("overfit_events", [])
    kept = [e for e in record["epochs"] if not e.get("catastrophic_overfitting")]
    if record.get("stopped_early"):
        kept = [e for e in kept if e["epoch"] == record["restored_epoch"]] or kept
    record["final"] = kept[-1] if kept else {}
    return record


def adversarial_train(
    model: TorchClassifier,
    data: Dataset,
    config: AdversarialTrainingConfig,
    *,
    from_scratch: bool = False,
    checkpoint: str | os.PathLike[str] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[TorchClassifier, dict[str, Any]]:
    """Adversarially train a copy of ``model`` on ``data``'s training split; return it and a record.

    The given model is not modified. ``from_scratch`` re-initialises the copy's parameters (seeded)
    instead of fine-tuning the given weights. ``on_epoch(metrics)`` receives each epoch's record entry.
    The inner step is ``TRAINING_STEPS[config.defense]``; the loop is :class:`bastion.training.Trainer`.
    """
    module = _trainable_copy(model, data, config, from_scratch)
    device = next(module.parameters()).device
    g = torch.Generator(device=device).manual_seed(config.seed)
    x_all, y_all = data.x_train.to(device), data.y_train.to(device)
    train_idx, val_idx = split_holdout(int(x_all.shape[0]), config.val_size, g, holdout=config.holdout)
    x_tr, y_tr = x_all[train_idx], y_all[train_idx]
    step = config.make_step(model.bounds)
    settings = dataclasses.asdict(config) | {"from_scratch": bool(from_scratch), "train_inputs": int(x_tr.shape[0])}
    guard = OverfitGuard(drop=config.overfit_drop, action=config.on_overfit, lr=config.lr)
    trainer = Trainer(
        module,
        epochs=config.epochs,
        batch_size=config.batch_size,
        step=step,
        optimizer=_optimizer(config),
        lr_schedule=None if config.lr_schedule == "constant" else (lambda p: config.lr_at(p) * step.lr_scale),
        generator=g,
        monitor=RobustHeldOut(
            x_all[val_idx], y_all[val_idx], ThreatModel(config.norm, config.eps, model.bounds), config.eval_steps
        ),
        callbacks=[guard] if config.defense == "fast-at" else [],
        checkpoint=checkpoint,
        settings=settings,
        on_epoch=on_epoch,
    )
    record = _finish(trainer.fit(x_tr, y_tr))
    for p in module.parameters():
        p.requires_grad_(False)
    return model.with_module(module), record
