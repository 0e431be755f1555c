"""The poisoning contract: ``attack.poison(data) -> PoisonedData``. It never trains.

A poisoning attack takes a clean :class:`~bastion.data.Dataset` and returns the training set an attacker
who controls part of it would leave behind, with an exact record of what changed: which records
(``indices``), their labels before and after, the trigger and target of a backdoor, and the attack's
parameters. Training on it is the one trainer's job (:func:`bastion.models.training.train_architecture`,
``bastion poison --train-arch``); measuring the result is :func:`evaluate_poisoning`'s.

Randomness comes from one ``torch.Generator`` (``generator=``, or one seeded with ``seed``): the same seed
poisons the same records the same way; the global RNG is neither used nor seeded. The test split is never
changed — it is where a backdoor's success is measured.

:class:`PoisoningAttack` validates what every attack shares (the poison rate in (0, 1), a target label
among the classes, records inside the bounds afterwards) and subclasses write :meth:`PoisoningAttack._poison`.
Attacks are registered by their CLI name in :data:`POISONING_ATTACKS`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from ... import metrics
from ...data.dataset import Dataset, index_mask
from ...errors import UsageError
from ...registry import Configured, Registry
from ...seeding import make_generator
from .triggers import Trigger

__all__ = [
    "POISONING_ATTACKS",
    "PoisonedData",
    "PoisoningAttack",
    "evaluate_poisoning",
    "get_poisoning_attack",
    "read_poison_mask",
    "register_poisoning",
]


@dataclass
class PoisonedData:
    """A poisoned training set and the record of what the attack did.

    Attributes:
        data: the dataset with the poisoned training split (``x_train``/``y_train`` changed in place, or
            extended with appended poisons); the test split and bounds are the clean dataset's.
        indices: (k,) int64 positions in ``data.x_train`` of the poisoned records, increasing.
        original_labels: (k,) the labels these records had in the clean data (for appended poisons: the
            label of the clean record each was made from).
        poisoned_labels: (k,) their labels now (equal to ``original_labels`` for clean-label attacks).
        attack: the attack's registered name. params: its configuration (``attack.params()``).
        target: the label a backdoor or targeted attack aims at (all-to-one), else ``None``.
        trigger: the backdoor trigger, else ``None``. all_to_all: the backdoor maps class c to c + 1 mod K.
        source_indices: (k,) positions in the *clean* training split that each poisoned record came from
            (the same as ``indices`` when records were changed in place).
        extra: attack-specific details (e.g. feature collision's target test input), JSON-able.
    """

    data: Dataset
    indices: Tensor
    original_labels: Tensor
    poisoned_labels: Tensor
    attack: str
    params: dict[str, Any] = field(default_factory=dict)
    target: int | None = None
    trigger: Trigger | None = None
    all_to_all: bool = False
    source_indices: Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_poisoned(self) -> int:
        return int(self.indices.numel())

    @property
    def rate(self) -> float:
        """Poisoned records as a share of the poisoned training split."""
        n = self.data.x_train.shape[0]
        return self.n_poisoned / n if n else math.nan

    @property
    def is_poisoned(self) -> Tensor:
        """(N_train,) bool: True at the poisoned records of ``data.x_train`` (the ground truth sanitisers are
        scored against)."""
        return index_mask(self.indices, self.data.x_train.shape[0])

    def target_labels(self, y: Tensor) -> Tensor:
        """The label the backdoor makes the model answer on a triggered input of true class ``y``."""
        if self.all_to_all:
            return (y + 1) % self.data.n_classes
        if self.target is None:
            raise UsageError(f"the {self.attack} attack has no target label")
        return torch.full_like(y, int(self.target))

    def triggered_test(self, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The test inputs an attacker would trigger: ``(x_triggered, y_true, y_target)``.

        Inputs whose true class is already the target are left out (all-to-one), so the success rate counts
        only flips the backdoor caused. Needs a trigger (backdoor attacks).
        """
        if self.trigger is None:
            raise UsageError(f"the {self.attack} attack plants no trigger: there are no triggered inputs")
        x, y = self.data.x_test, self.data.y_test
        if not self.all_to_all and self.target is not None:
            keep = y != self.target
            x, y = x[keep], y[keep]
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        return self.trigger.apply(x, g), y, self.target_labels(y)

    def record(self) -> dict[str, Any]:
        """What was poisoned, as one JSON-able object (what ``bastion poison`` writes next to the data)."""
        return {
            "schema": "bastion.poison/1",
            "attack": self.attack,
            "params": _jsonable(self.params),
            "data": self.data.name,
            "n_train": int(self.data.x_train.shape[0]),
            "n_poisoned": self.n_poisoned,
            "rate": self.rate,
            "target": self.target,
            "all_to_all": self.all_to_all,
            "indices": self.indices.tolist(),
            "source_indices": None if self.source_indices is None else self.source_indices.tolist(),
            "original_labels": self.original_labels.tolist(),
            "poisoned_labels": self.poisoned_labels.tolist(),
            "trigger": None if self.trigger is None else self.trigger.to_dict(),
            "extra": _jsonable(self.extra),
        }

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write the poisoned dataset as ``path`` (.npz: ``x``, ``y``, ``x_test``, ``y_test``, ``bounds`` and the
        ``poisoned`` mask — loadable with ``load_dataset(path)`` / ``--data path``) and the record as
        ``path`` with the suffix ``.json``. Returns both paths."""
        p = Path(path)
        if p.suffix != ".npz":
            raise UsageError(f"the poisoned dataset is written as .npz, got {str(path)!r}")
        d = self.data
        with open(p, "wb") as f:
            np.savez_compressed(
                f,
                x=d.x_train.cpu().numpy(),
                y=d.y_train.cpu().numpy(),
                x_test=d.x_test.cpu().numpy(),
                y_test=d.y_test.cpu().numpy(),
                bounds=np.asarray(d.bounds, dtype=np.float64),
                poisoned=self.is_poisoned.numpy(),
            )
        rec = p.with_suffix(".json")
        rec.write_text(json.dumps(self.record()) + "\n", encoding="utf-8")
        return p, rec

    def __repr__(self) -> str:
        return (
            f"PoisonedData({self.attack!r}, {self.n_poisoned} of {self.data.x_train.shape[0]} records, "
            f"target={self.target}, trigger={self.trigger!r})"
        )


def read_poison_mask(path: str | Path) -> Tensor | None:
    """The ``poisoned`` mask (N_train,) bool that :meth:`PoisonedData.save` wrote into a ``.npz`` dataset, or
    ``None`` when ``path`` is not such a file (the ground truth a sanitiser can be scored against)."""
    p = Path(path)
    if p.suffix != ".npz" or not p.is_file():
        return None
    try:
        with np.load(p, allow_pickle=False) as f:
            return torch.from_numpy(f["poisoned"].astype(bool)) if "poisoned" in f.files else None
    except (OSError, ValueError):
        return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


@dataclass(kw_only=True, eq=False, repr=False)
class PoisoningAttack(Configured):
    """Base class of poisoning attacks.

    Attacks are keyword-only dataclasses: a subclass declares only its own parameters as fields (with the
    paper's defaults) and validates them in ``__post_init__`` (calling ``super().__post_init__()``), so the
    signature, :meth:`params` and ``repr`` show the full configuration. Subclasses set ``name`` (by
    :func:`register_poisoning`) and ``clean_label`` (labels are never changed) and implement :meth:`_poison`;
    :meth:`poison` validates the data, makes the generator and checks what comes back (records inside the
    bounds, the record consistent with the data).

    Args:
        rate: share of the training split to poison, in (0, 1) (attacks that add poisons read it as the
            number to add over the training size).
        seed: seeds the attack's generator when ``generator`` is not given.
        generator: a ``torch.Generator`` to draw from (shared state: the caller's sequence continues).
    """

    name: ClassVar[str] = "poisoning"
    clean_label: ClassVar[bool] = False

    rate: float = 0.05
    target: int | None = None  # the label aimed at (backdoors, targeted attacks); checked against the classes
    seed: int | None = 0
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        rate = self.rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or not 0 < rate < 1:
            raise UsageError(f"the poison rate must lie strictly between 0 and 1 (e.g. 0.05 for 5%), got {rate!r}")
        self.rate = float(rate)

    # -- subclasses implement --------------------------------------------------------------------
    def _poison(self, data: Dataset, generator: torch.Generator) -> PoisonedData:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_data(self, data: Dataset) -> None:
        """Raise :class:`UsageError` if this attack cannot poison ``data`` (default: any labelled data)."""

    # -- helpers -----------------------------------------------------------------------------------
    def _make_generator(self) -> torch.Generator:
        return make_generator(self.seed, self.generator)

    @staticmethod
    def _check_target(target: int | None, n_classes: int) -> None:
        if target is None:
            return
        if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < n_classes:
            raise UsageError(f"the target label must be a class index in [0, {n_classes - 1}], got {target!r}")

    def _count(self, n: int) -> int:
        """How many of ``n`` records ``rate`` poisons (at least one)."""
        return max(1, round(self.rate * n))

    @staticmethod
    def _draw(candidates: Tensor, k: int, generator: torch.Generator, *, too_few: str) -> Tensor:
        """``k`` of the ``candidates`` (positions in the training split) drawn without replacement by one
        ``randperm`` from ``generator``, in increasing order; ``too_few`` is the :class:`UsageError`'s message
        when there are fewer than ``k`` candidates (nothing is drawn then)."""
        if k > candidates.numel():
            raise UsageError(too_few)
        return candidates[torch.randperm(candidates.numel(), generator=generator)[:k]].sort().values

    def _changed_in_place(
        self, data: Dataset, pick: Tensor, original: Tensor, poisoned: Tensor, **record: Any
    ) -> PoisonedData:
        """The record of an attack that changed the training records ``pick`` in place (none appended): their
        ``original`` labels and (a copy of) their ``poisoned`` labels, the attack's name and parameters, ``pick``
        as the source of each poisoned record, and the rest of the record (``target``, ``trigger``, ``extra``,
        ...) from ``record``."""
        return PoisonedData(
            data=data,
            indices=pick,
            original_labels=original,
            poisoned_labels=poisoned.clone(),
            attack=self.name,
            params=self.params(),
            source_indices=pick.clone(),
            **record,
        )

    # -- public API --------------------------------------------------------------------------------
    def poison(self, data: Dataset) -> PoisonedData:
        """Poison ``data``'s training split; the clean ``data`` is not modified."""
        if not isinstance(data, Dataset):
            raise UsageError(f"poison needs a bastion Dataset, got {type(data).__name__}")
        if data.x_train.shape[0] < 2:
            raise UsageError(f"poisoning needs a training split of at least 2 records, got {data.x_train.shape[0]}")
        if data.n_classes < 2:
            raise UsageError(f"poisoning needs at least 2 classes, the data has {data.n_classes}")
        self._check_target(self.target, data.n_classes)
        self._check_data(data)
        clean = Dataset(
            data.name,
            data.x_train.clone(),
            data.y_train.clone(),
            data.x_test,
            data.y_test,
            data.bounds,
            data.n_classes,
            data.feature_names,
            dict(data.meta),
        )
        out = self._poison(clean, self._make_generator())
        lo, hi = data.bounds
        x = out.data.x_train
        if float(x.min()) < lo - 1e-5 or float(x.max()) > hi + 1e-5:  # pragma: no cover - a bug in an attack
            raise AssertionError(f"{type(self).__name__} left records outside the bounds {data.bounds}")
        out.data.meta = {**data.meta, "poisoned_by": out.attack, "n_poisoned": out.n_poisoned}
        return out


POISONING_ATTACKS: Registry[type[PoisoningAttack]] = Registry("poisoning attack")
"""Poisoning attacks by the name ``bastion poison --attack`` and the audit resolve (``"badnets"``, ...).
``register_poisoning(name)`` is the class decorator adding a poisoning attack (a taken name is refused unless
``replace=True``); ``get_poisoning_attack('badnets', rate=0.05)`` builds one."""

register_poisoning = POISONING_ATTACKS.named
get_poisoning_attack = POISONING_ATTACKS.create


@torch.no_grad()
def evaluate_poisoning(
    predict: Callable[[Tensor], Tensor],
    poisoned: PoisonedData,
    *,
    clean_predict: Callable[[Tensor], Tensor] | None = None,
    batch_size: int = 1000,
) -> dict[str, float]:
    """What the poisoning achieved on a model trained on ``poisoned``: a dict of floats.

    ``predict`` maps inputs (N, *input_shape) to labels (N,) (``classifier.predict`` or a module's argmax).
    Always: ``clean_accuracy`` on the clean test split. For a backdoor: ``attack_success_rate`` — triggered
    test inputs whose true class is not the target, classified as the target (:func:`bastion.metrics.
    backdoor_success_rate`), and ``n_triggered``. For a targeted attack without a trigger (feature collision):
    ``targets_hit``, the share of ``extra["target_indices"]`` test inputs classified as ``extra["adversarial_
    labels"]``. With ``clean_predict`` (the same recipe trained on clean data): ``clean_model_accuracy`` and,
    for a backdoor, ``clean_model_attack_success_rate`` (the same triggered inputs on the clean model: what the
    trigger does without the poison).
    """

    def run(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        return (
            torch.cat([fn(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])
            if len(x)
            else x.new_zeros(0, dtype=torch.long)
        )

    d = poisoned.data
    out: dict[str, float] = {"clean_accuracy": metrics.accuracy(run(predict, d.x_test), d.y_test)}
    if clean_predict is not None:
        out["clean_model_accuracy"] = metrics.accuracy(run(clean_predict, d.x_test), d.y_test)
    if poisoned.trigger is not None:
        x_t, _, y_target = poisoned.triggered_test()
        out["attack_success_rate"] = metrics.backdoor_success_rate(run(predict, x_t), y_target)
        out["n_triggered"] = float(x_t.shape[0])
        if clean_predict is not None:
            out["clean_model_attack_success_rate"] = metrics.backdoor_success_rate(run(clean_predict, x_t), y_target)
    elif "target_indices" in poisoned.extra:
        idx = torch.as_tensor(poisoned.extra["target_indices"], dtype=torch.long)
        want = torch.as_tensor(poisoned.extra["adversarial_labels"], dtype=torch.long)
        out["targets_hit"] = metrics.accuracy(run(predict, d.x_test[idx]), want)
        if clean_predict is not None:
            out["clean_model_targets_hit"] = metrics.accuracy(run(clean_predict, d.x_test[idx]), want)
    return out
