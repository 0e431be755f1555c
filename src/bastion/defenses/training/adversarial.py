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
optimizer, generator state and the record after every epoch, written atomically with ``torch.save``
of tensors and plain values only, read back with ``torch.load(weights_only=True)``; the same call
resumes after the last finished epoch, and refuses a checkpoint of other settings.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...attacks.evasion.steps import ascent_direction, random_start
from ...data.dataset import Dataset
from ...errors import UsageError
from ...models.base import validate_inputs
from ...models.torch import TorchClassifier
from ...threat import ThreatModel, canonical_norm

__all__ = ["DEFENSES", "FAST_INITS", "LR_SCHEDULES", "AdversarialTrainingConfig", "adversarial_train", "pgd_examples"]

DEFENSES = ("pgd-at", "trades", "fast-at")
FAST_INITS = ("prior", "random")
LR_SCHEDULES = ("constant", "cosine", "cyclic")


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
        if self.defense not in DEFENSES:
            raise UsageError(f"unknown defense {self.defense!r}: choose one of {', '.join(DEFENSES)}")
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
        if self.step_size is not None:
            return float(self.step_size)
        if self.defense == "fast-at":
            return 0.25 * eps if self.fast_init == "prior" else 1.25 * eps
        return 2.5 * eps / self.attack_steps


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
    eps = float(threat.eps)
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


def _trades_examples(
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


def _fgsm_rs(
    module: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, alpha: float, generator: torch.Generator
) -> Tensor:
    """Wong et al.'s FGSM with a uniform random start; the step may leave the ball and is projected back."""
    return pgd_examples(module, x, y, threat, 1, alpha, generator)


@torch.no_grad()
def _accuracy(module: nn.Module, x: Tensor, y: Tensor) -> float:
    was = module.training
    module.eval()
    acc = float((module(x).argmax(1) == y).float().mean())
    module.train(was)
    return acc


def _robust_accuracy(
    module: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, steps: int, generator: torch.Generator
) -> float:
    adv = pgd_examples(module, x, y, threat, steps, 2.5 * float(threat.eps) / steps, generator)
    return _accuracy(module, adv, y)


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


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
    """
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
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
    for p in module.parameters():
        p.requires_grad_(True)
    g = torch.Generator().manual_seed(config.seed)
    perm = torch.randperm(n_total, generator=g)
    val_idx = perm[: config.val_size]
    train_idx = perm[config.val_size :] if config.holdout else perm
    x_tr, y_tr = data.x_train[train_idx], data.y_train[train_idx]
    x_val, y_val = data.x_train[val_idx], data.y_train[val_idx]
    params = [p for p in module.parameters()]
    opt: torch.optim.Optimizer = (
        torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
        if config.optimizer == "adam"
        else torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    )
    settings = dataclasses.asdict(config) | {"from_scratch": bool(from_scratch), "train_inputs": int(x_tr.shape[0])}
    record: dict[str, Any] = {"config": settings, "epochs": [], "seconds": 0.0, "overfit_events": []}
    start_epoch, best = 0, (-1.0, None, 0)
    # fast-at's prior start: every training example's perturbation from its previous epoch
    prior: Tensor | None = None
    if config.defense == "fast-at" and config.fast_init == "prior":
        prior = random_start(x_tr, config.norm, config.eps, g) - x_tr
    ck = Path(checkpoint) if checkpoint is not None else None
    if ck is not None and ck.exists():
        try:
            state = torch.load(ck, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a damaged checkpoint is a usage problem
            raise UsageError(f"cannot read checkpoint {ck}: {exc}; delete it to start over") from None
        if json.loads(state["settings"]) != json.loads(json.dumps(settings)):
            raise UsageError(f"checkpoint {ck} was written with other settings; delete it or use another path")
        module.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        g.set_state(state["generator"])
        record = json.loads(state["record"])
        start_epoch = int(state["epoch"]) + 1
        best = (float(state["best_robust"]), state.get("best_model"), int(state.get("best_epoch", 0)))
        prior = state.get("prior")
    lo, hi = model.bounds
    eval_threat = ThreatModel(config.norm, config.eps, (lo, hi))
    lr_scale = 1.0
    epoch = start_epoch
    while epoch < config.epochs:
        t0 = time.perf_counter()
        eps = config.eps * min(1.0, (epoch + 1) / config.eps_warmup) if config.eps_warmup else config.eps
        threat = ThreatModel(config.norm, eps, (lo, hi))
        alpha = config.alpha(eps) * (lr_scale if config.defense == "fast-at" else 1.0)
        snapshot = copy.deepcopy(module.state_dict()) if config.defense == "fast-at" else None
        opt_snapshot = copy.deepcopy(opt.state_dict()) if config.defense == "fast-at" else None
        prior_snapshot = prior.clone() if prior is not None and config.on_overfit == "restart" else None
        module.train()
        order = torch.randperm(x_tr.shape[0], generator=g)
        total, seen = 0.0, 0
        for i in range(0, x_tr.shape[0], config.batch_size):
            idx = order[i : i + config.batch_size]
            if config.lr_schedule != "constant":
                lr_now = config.lr_at((epoch + i / x_tr.shape[0]) / config.epochs) * lr_scale
                for group in opt.param_groups:
                    group["lr"] = lr_now
            xb, yb = x_tr[idx], y_tr[idx]
            if config.defense == "pgd-at":
                x_adv = pgd_examples(module, xb, yb, threat, config.attack_steps, alpha, g)
                loss = F.cross_entropy(module(x_adv), yb)
            elif config.defense == "fast-at":
                if prior is not None:
                    x_adv = pgd_examples(module, xb, yb, threat, 1, alpha, g, start=xb + prior[idx])
                    prior[idx] = x_adv - xb
                else:
                    x_adv = _fgsm_rs(module, xb, yb, threat, alpha, g)
                loss = F.cross_entropy(module(x_adv), yb)
            else:
                x_adv = _trades_examples(module, xb, threat, config.attack_steps, alpha, g)
                logits = module(xb)
                kl = F.kl_div(F.log_softmax(module(x_adv), dim=1), F.softmax(logits, dim=1), reduction="batchmean")
                loss = F.cross_entropy(logits, yb) + config.beta * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
            seen += idx.numel()
        clean = _accuracy(module, x_val, y_val)
        robust = _robust_accuracy(module, x_val, y_val, eval_threat, config.eval_steps, g)
        entry = {
            "epoch": epoch + 1,
            "eps": eps,
            "lr": opt.param_groups[0]["lr"],
            "loss": total / max(seen, 1),
            "val_clean_accuracy": clean,
            "val_robust_accuracy": robust,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        if config.defense == "fast-at" and best[0] >= 0 and robust < best[0] - config.overfit_drop:
            # catastrophic overfitting: PGD accuracy collapsed during this epoch
            event = {"epoch": epoch + 1, "val_robust_accuracy": robust, "best": best[0], "action": config.on_overfit}
            record["overfit_events"].append(event)
            entry["catastrophic_overfitting"] = True
            record["epochs"].append(entry)
            record["seconds"] += entry["seconds"]
            if on_epoch is not None:
                on_epoch(entry)
            if config.on_overfit == "stop" or lr_scale < 1 / 16:
                module.load_state_dict(best[1] if best[1] is not None else snapshot)
                record["stopped_early"] = True
                record["restored_epoch"] = best[2]
                break
            module.load_state_dict(snapshot)
            opt.load_state_dict(opt_snapshot)
            if prior_snapshot is not None:
                prior = prior_snapshot
            lr_scale /= 2
            for group in opt.param_groups:
                group["lr"] = config.lr * lr_scale
            continue  # the same epoch again, with half the step and learning rate
        if robust >= best[0]:
            best = (robust, copy.deepcopy(module.state_dict()) if config.defense == "fast-at" else None, epoch + 1)
        record["epochs"].append(entry)
        record["seconds"] += entry["seconds"]
        if ck is not None:  # saved before the callback: an interruption there loses nothing
            _save_checkpoint(
                ck,
                {
                    "epoch": epoch,
                    "model": module.state_dict(),
                    "optimizer": opt.state_dict(),
                    "generator": g.get_state(),
                    "record": json.dumps(record),
                    "settings": json.dumps(settings),
                    "best_robust": best[0],
                    "best_epoch": best[2],
                    **({"best_model": best[1]} if best[1] is not None else {}),
                    **({"prior": prior} if prior is not None else {}),
                },
            )
        if on_epoch is not None:
            on_epoch(entry)
        epoch += 1
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    record["seconds"] = round(record["seconds"], 3)
    kept = [e for e in record["epochs"] if not e.get("catastrophic_overfitting")]
    if record.get("stopped_early"):
        kept = [e for e in kept if e["epoch"] == record["restored_epoch"]] or kept
    record["final"] = kept[-1] if kept else {}
    hardened = TorchClassifier(
        module,
        bounds=model.bounds,
        n_classes=model.n_classes,
        input_shape=tuple(model.input_shape),
        output=model.output,
    )
    hardened.arch = getattr(model, "arch", None)
    return hardened, record
