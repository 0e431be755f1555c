"""How susceptible is a training recipe: poison the data, train the recipe on it, measure, compare with clean.

:func:`run_poisoning` is what ``bastion poison --train-arch`` and the audit's ``poisoning`` probe do: the
attack poisons the training split (it never trains), the one trainer trains a registered architecture on the
result with the recipe the zoo uses (:data:`bastion.models.training.TRAIN_CONFIGS`), and
:func:`~bastion.attacks.poisoning.evaluate_poisoning` measures the model next to the same recipe trained on
the clean data (the zoo's cached model when the recipe and data are the zoo's own, so it is not trained
twice).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...data.dataset import Dataset
from ...models.torch import TorchClassifier
from ...models.training import train_recipe
from .base import PoisonedData, PoisoningAttack, evaluate_poisoning

__all__ = ["PoisoningRun", "clean_reference", "run_poisoning", "train_recipe"]


def clean_reference(
    data: Dataset, arch: str, *, epochs: int | None = None, seed: int = 0, log: Callable[[str], None] | None = None
) -> TorchClassifier:
    """The same recipe trained on the clean ``data``: the zoo's cached model when ``arch`` is a zoo model, ``data``
    its built-in dataset and the recipe unchanged; else trained here."""
    from ...models.training import TRAIN_CONFIGS
    from ...models.zoo import ZOO, load_zoo

    entry = ZOO.get(arch)
    recipe = TRAIN_CONFIGS.get(arch)
    same = recipe is not None and (epochs is None or epochs == recipe.epochs) and seed == recipe.seed
    if entry is not None and entry.kind == "torch" and entry.dataset == data.name and same:
        clf = load_zoo(arch, log=log)
        if isinstance(clf, TorchClassifier):
            return clf
    return train_recipe(data, arch, epochs=epochs, seed=seed, log=log)[0]


@dataclass
class PoisoningRun:
    """One poisoning experiment: the poisoned data, the model trained on it, and what was measured.

    ``metrics``: :func:`evaluate_poisoning`'s (``clean_accuracy``, ``clean_model_accuracy``, and
    ``attack_success_rate`` / ``clean_model_attack_success_rate`` for a backdoor, ``targets_hit`` for a targeted
    attack) plus ``accuracy_drop`` (clean model minus poisoned model, in accuracy). ``record``: the training
    record. ``seconds``: poisoning plus training.
    """

    poisoned: PoisonedData
    model: TorchClassifier
    metrics: dict[str, float]
    record: dict[str, Any]
    seconds: float


def run_poisoning(
    attack: PoisoningAttack,
    data: Dataset,
    arch: str,
    *,
    clean_model: TorchClassifier | None = None,
    epochs: int | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> PoisoningRun:
    """Poison ``data`` with ``attack``, train ``arch`` on it (the zoo recipe), and measure against ``clean_model``
    (default: :func:`clean_reference`, the same recipe on the clean data)."""
    start = time.perf_counter()
    poisoned = attack.poison(data)
    if log is not None:
        log(f"{attack.name}: poisoned {poisoned.n_poisoned} of {poisoned.data.x_train.shape[0]} training records")
        log(f"training {arch} on the poisoned data")
    model, record = train_recipe(poisoned.data, arch, epochs=epochs, seed=seed, log=log)
    if clean_model is None:
        if log is not None:
            log(f"the clean reference: {arch} on the clean data")
        clean_model = clean_reference(data, arch, epochs=epochs, seed=seed, log=log)
    with clean_model.attack_mode(), model.attack_mode():
        m = evaluate_poisoning(model.predict, poisoned, clean_predict=clean_model.predict)
    m["accuracy_drop"] = m["clean_model_accuracy"] - m["clean_accuracy"]
    return PoisoningRun(poisoned, model, m, record, time.perf_counter() - start)
