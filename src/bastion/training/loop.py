"""The one training loop: :class:`Trainer` (and :func:`fit`, its one-call form).

Every model bastion trains goes through it: ``bastion train`` and the zoo (clean steps), adversarial training
(PGD-AT, TRADES, fast AT), Gaussian-noise training for randomized smoothing, and next poisoned models,
DP-SGD (pass Opacus' ``DPOptimizer`` as ``optimizer`` and a Poisson ``sampler``) and federated clients
(``epochs`` local epochs on a kept optimizer). What varies is plugged in:

- the **step** (:mod:`bastion.training.steps`): a per-batch transform returning what to train on or the loss;
- the **optimizer** (an instance, or a factory of the parameters; default Adam at ``lr``), an optional torch
  **scheduler** (stepped after every epoch) and an optional per-batch **lr_schedule** (``progress`` in [0, 1]
  of the run -> learning rate);
- the **monitor**: held-out metrics after every epoch (:class:`HeldOut`: accuracy on a validation split);
- **callbacks** (:class:`Callback`): epoch-level decisions (stop, repeat the epoch), e.g. fast AT's
  catastrophic-overfitting guard.

Randomness comes from one ``torch.Generator`` (shuffling, the steps' noise and random starts, the monitor's
attacks); the global RNG is neither used nor seeded. The module, the data and the generator must share one
device. ``checkpoint=PATH`` saves everything after every finished epoch and the same call resumes from it,
bit-identically. ``verbose=True`` shows a tqdm bar on a terminal (when tqdm is installed); the loop never prints.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler

from .. import metrics
from ..errors import UsageError
from .record import load_checkpoint, new_record, save_checkpoint
from .steps import Batch, StepOutput, TrainingStep, make_step

__all__ = ["Callback", "HeldOut", "Trainer", "accuracy", "fit", "shuffled_batches", "split_holdout"]

Sampler = Callable[[int, int, torch.Generator], Iterable[Tensor]]
Monitor = Callable[[nn.Module, torch.Generator], Mapping[str, float]]
ACTIONS = ("continue", "repeat", "stop")


@torch.no_grad()
def accuracy(module: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """Accuracy of ``module`` on ``(x, y)`` in eval mode, in batches (its train/eval mode is restored)."""
    was = module.training
    module.eval()
    try:
        pred = [module(x[i : i + batch_size]).argmax(1) for i in range(0, x.shape[0], batch_size)]
    finally:
        module.train(was)
    return metrics.accuracy(torch.cat(pred), y) if pred else 0.0


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """The default sampler: a fresh permutation of ``range(n)`` per epoch, cut into batches of ``batch_size``."""
    perm = torch.randperm(n, generator=generator, device=generator.device)
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


def split_holdout(n: int, val_size: int, generator: torch.Generator, *, holdout: bool = True) -> tuple[Tensor, Tensor]:
    """``(train_index, val_index)``: ``val_size`` random positions of ``range(n)`` for monitoring, and the rest
    for training (all of them with ``holdout=False``)."""
    perm = torch.randperm(n, generator=generator, device=generator.device)
    return (perm[val_size:] if holdout else perm), perm[:val_size]


class HeldOut:
    """The default monitor: accuracy on a held-out split, recorded as ``val_accuracy`` after every epoch."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __call__(self, module: nn.Module, generator: torch.Generator) -> dict[str, float]:
        return {"val_accuracy": accuracy(module, self.x, self.y)}


class Callback:
    """Epoch-level hook: ``end_epoch`` returns ``"continue"``, ``"repeat"`` (run the epoch again: the callback
    has restored what it needs) or ``"stop"``; only continued epochs are checkpointed. Its state travels in
    checkpoints through ``state_dict`` / ``load_state_dict``."""

    def start_epoch(self, trainer: Trainer, epoch: int) -> None:
        """Before the batches of ``epoch`` (0-based)."""

    def end_epoch(self, trainer: Trainer, entry: dict[str, Any]) -> str:
        """After the epoch's monitoring, with its record entry (which it may annotate)."""
        return "continue"

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def _device(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    raise UsageError("the module has no parameters to train")


def _progress(enabled: bool, total: int, desc: str) -> Any:
    """A tqdm bar on stderr when enabled, stderr is a terminal and tqdm is installed; else None."""
    if not enabled or not sys.stderr.isatty():
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, leave=False, file=sys.stderr)


class Trainer:
    """Train ``module`` in place with one step per batch; :meth:`fit` returns the record.

    Args:
        module: the network, on the device of the data it will be fitted on.
        epochs, batch_size: passes over the data and inputs per step (integers >= 1).
        step: a :class:`TrainingStep`, a name registered in :data:`TRAINING_STEPS` (built without options), or
            a function ``(module, batch, generator, epoch) -> (x, y) | loss``.
        optimizer: an optimizer instance or a factory ``params -> optimizer``; default Adam(``lr``,
            ``weight_decay``) over every parameter (frozen ones get no gradient and stay as they are).
        scheduler: a torch LR scheduler (or a factory ``optimizer -> scheduler``), stepped after every epoch.
        lr_schedule: ``progress -> lr`` set on every parameter group before each batch (progress: share of
            the run done, 0 at the first batch).
        loss: ``loss(logits, y)`` for steps that return a batch; default cross-entropy.
        generator: the run's ``torch.Generator`` (on the module's device); default one seeded with ``seed``.
        monitor: ``monitor(module, generator) -> {name: value}`` after every epoch (e.g. :class:`HeldOut`).
        callbacks: :class:`Callback` objects. sampler: ``(n, batch_size, generator) -> index batches`` per epoch.
        checkpoint: a file written after every epoch; an existing one (of the same settings) is resumed.
        settings: the JSON-ready description recorded as the record's ``config`` and checked on resume.
        on_epoch: ``on_epoch(entry)`` after every epoch (after its checkpoint is written).
        verbose: a progress bar on a terminal (tqdm, if installed).
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        epochs: int,
        batch_size: int,
        step: TrainingStep | str | Callable[..., StepOutput] = "clean",
        optimizer: torch.optim.Optimizer | Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        scheduler: LRScheduler | Callable[[torch.optim.Optimizer], LRScheduler] | None = None,
        lr_schedule: Callable[[float], float] | None = None,
        loss: Callable[[Tensor, Tensor], Tensor] | None = None,
        generator: torch.Generator | None = None,
        seed: int = 0,
        monitor: Monitor | None = None,
        callbacks: Sequence[Callback] = (),
        sampler: Sampler | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        settings: dict[str, Any] | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        verbose: bool = False,
    ) -> None:
        if not isinstance(module, nn.Module):
            raise UsageError(f"the trainer trains a torch.nn.Module, got {type(module).__name__}")
        for name, value in (("epochs", epochs), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{name} must be an integer >= 1, got {value!r}")
        self.module, self.epochs, self.batch_size = module, epochs, batch_size
        self.device = _device(module)
        self.step = make_step(step)
        self.generator = generator if generator is not None else torch.Generator(self.device).manual_seed(seed)
        if self.generator.device != self.device:
            raise UsageError(
                f"the generator is on {self.generator.device} but the module on {self.device}: "
                f"create it with torch.Generator(device={str(self.device)!r})"
            )
        if isinstance(optimizer, torch.optim.Optimizer):
            self.optimizer = optimizer
        else:
            factory = optimizer or (lambda ps: torch.optim.Adam(ps, lr=lr, weight_decay=weight_decay))
            self.optimizer = factory(list(module.parameters()))
        if scheduler is None or isinstance(scheduler, LRScheduler):
            self.scheduler = scheduler
        else:
            self.scheduler = scheduler(self.optimizer)
        self.lr_schedule, self.loss = lr_schedule, loss or F.cross_entropy
        self.monitor, self.callbacks = monitor, list(callbacks)
        self.sampler = sampler or shuffled_batches
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.settings = settings if settings is not None else self._settings()
        self.on_epoch, self.verbose = on_epoch, verbose
        self.record: dict[str, Any] = new_record(self.settings)

    def _settings(self) -> dict[str, Any]:
        opt = self.optimizer
        defaults = {k: v for k, v in opt.defaults.items() if isinstance(v, (bool, int, float, str, type(None)))}
        return {
            "step": repr(self.step),
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "optimizer": {"name": type(opt).__name__, **defaults},
            "scheduler": type(self.scheduler).__name__ if self.scheduler is not None else None,
        }

    # -- the loop ------------------------------------------------------------------------------------------
    def fit(self, x: Tensor, y: Tensor) -> dict[str, Any]:
        """Train on ``x`` (N, *input_shape) and labels ``y`` (N,); return the record (also ``self.record``)."""
        self._check_data(x, y)
        self.step.setup(x, y, self.generator)
        epoch: int | None = self._resume()
        while epoch is not None and epoch < self.epochs:
            epoch = self._epoch(x, y, epoch)
        self.module.eval()
        self.record["seconds"] = round(self.record["seconds"], 3)
        return self.record

    def _epoch(self, x: Tensor, y: Tensor, epoch: int) -> int | None:
        """One epoch: batches, scheduler, monitor, callbacks, record, checkpoint; the next epoch or None (stop)."""
        t0 = time.perf_counter()
        self.step.start_epoch(epoch)
        for cb in self.callbacks:
            cb.start_epoch(self, epoch)
        loss, lr = self._batches(x, y, epoch)
        if self.scheduler is not None:
            self.scheduler.step()
        values = dict(self.monitor(self.module, self.generator)) if self.monitor is not None else {}
        entry = {"epoch": epoch + 1, **self.step.describe(), "lr": lr, "loss": loss, **values}
        entry["seconds"] = round(time.perf_counter() - t0, 3)
        actions = [cb.end_epoch(self, entry) for cb in self.callbacks]
        for a in actions:
            if a not in ACTIONS:
                raise UsageError(f"a callback's end_epoch must return one of {', '.join(ACTIONS)}, got {a!r}")
        action = "stop" if "stop" in actions else "repeat" if "repeat" in actions else "continue"
        self.record["epochs"].append(entry)
        self.record["seconds"] += entry["seconds"]
        if action == "continue" and self.checkpoint is not None:  # before the callback: an interruption loses nothing
            self._save(epoch)
        if self.on_epoch is not None:
            self.on_epoch(entry)
        return None if action == "stop" else epoch if action == "repeat" else epoch + 1

    def _batches(self, x: Tensor, y: Tensor, epoch: int) -> tuple[float, float]:
        """The epoch's optimisation steps; the mean loss and the learning rate of its last batch."""
        module, opt, n = self.module, self.optimizer, x.shape[0]
        module.train()
        batches = list(self.sampler(n, self.batch_size, self.generator))
        bar = _progress(self.verbose, len(batches), f"epoch {epoch + 1}/{self.epochs}")
        total, seen = 0.0, 0
        for idx in batches:
            if self.lr_schedule is not None:
                lr_now = self.lr_schedule((epoch + seen / n) / self.epochs)
                for group in opt.param_groups:
                    group["lr"] = lr_now
            loss = self._loss(Batch(x[idx], y[idx], idx), epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward untyped
            opt.step()
            total += float(loss.detach()) * idx.numel()
            seen += idx.numel()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{total / seen:.4f}", refresh=False)
        if bar is not None:
            bar.close()
        return total / max(seen, 1), float(opt.param_groups[0]["lr"])

    def _loss(self, batch: Batch, epoch: int) -> Tensor:
        out = self.step(self.module, batch, self.generator, epoch)
        if isinstance(out, Batch):
            out = (out.x, out.y)
        if isinstance(out, Tensor):
            if out.dim() != 0:
                raise UsageError(f"a step that returns the loss must return a scalar, got shape {tuple(out.shape)}")
            return out
        xb, yb = out
        return self.loss(self.module(xb), yb)

    # -- data, devices, checkpoints ------------------------------------------------------------------------
    def _check_data(self, x: Tensor, y: Tensor) -> None:
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2 or x.shape[0] == 0:
            raise UsageError("x must be a non-empty floating-point tensor of shape (N, *input_shape)")
        if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0] or y.is_floating_point():
            raise UsageError(f"y must be integer labels of shape ({x.shape[0]},), one per input")
        for name, t in (("x", x), ("y", y)):
            if t.device != self.device:
                raise UsageError(
                    f"{name} is on {t.device} but the module on {self.device}: move them to one device "
                    f"(module.to(device), x.to(device), y.to(device))"
                )

    def _save(self, epoch: int) -> None:
        if self.checkpoint is None:
            return
        state = {
            "epoch": epoch,
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "generator": self.generator.get_state(),
            "record": json.dumps(self.record),
            "settings": json.dumps(self.settings),
            "step": self.step.state_dict(),
            "callbacks": [cb.state_dict() for cb in self.callbacks],
        }
        save_checkpoint(self.checkpoint, state)

    def _resume(self) -> int:
        """The first epoch to run: 0, or the one after a checkpoint's (whose states are restored)."""
        self.record = new_record(copy.deepcopy(self.settings))
        if self.checkpoint is None or not self.checkpoint.exists():
            return 0
        state = load_checkpoint(self.checkpoint, self.settings)
        try:
            self.module.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise UsageError(f"checkpoint {self.checkpoint} does not fit this model or optimizer: {exc}") from None
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        self.record = json.loads(state["record"])
        self.step.load_state_dict(state["step"])
        for cb, cb_state in zip(self.callbacks, state["callbacks"]):
            cb.load_state_dict(cb_state)
        return int(state["epoch"]) + 1


def fit(
    module: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    validation: tuple[Tensor, Tensor] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Train ``module`` in place on ``(x, y)`` with :class:`Trainer` ``options``; return the record.

    ``validation=(x_val, y_val)`` records ``val_accuracy`` after every epoch (unless a ``monitor`` is given)."""
    if validation is not None and "monitor" not in options:
        options["monitor"] = HeldOut(*validation)
    return Trainer(module, **options).fit(x, y)
