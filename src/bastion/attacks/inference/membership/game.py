"""Two ways to measure membership leakage, one result shape.

- **The game** (:func:`membership_game`, Carlini et al. 2022's evaluation): draw a population of ``2 * train_size``
  records from the data, train the target with the recipe on a random half of it and ``references`` reference
  models on other random halves, then score every population record. Members and non-members are known exactly
  and in equal numbers; this measures a *training recipe*.
- **Audit mode** (:func:`membership_audit`): a given model, its training split taken as the members and the test
  split as the non-members (an assumption the report states: only the model's owner knows); reference models
  are trained with the model's recipe on random halves of the union.

:func:`run_membership_attacks` scores the population with each attack and evaluates it
(:func:`~.base.evaluate_membership`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .... import metrics
from ....data.dataset import Dataset
from ....errors import UsageError
from ....models.base import Classifier
from .base import MembershipAttack
from .references import Recipe, ReferenceModels, half_mask, scores_of, train_references

__all__ = ["MembershipSetup", "membership_audit", "membership_game", "run_membership_attacks"]

Progress = Callable[[int, int], None]


@dataclass
class MembershipSetup:
    """A target, a population and who of it the target was trained on.

    Attributes:
        population: the records (``population.x_train``, ``y_train``); its test split is empty.
        target: the model under attack. target_scores: its scores on every population record (N, n_classes).
        is_member: (N,) bool, the truth. references: the reference models (``None`` when none were trained).
        train_accuracy, test_accuracy: the target's accuracy on its members and on the non-members.
        mode: ``"game"`` or ``"audit"``. assumptions: what the numbers rest on (stated in reports).
    """

    population: Dataset
    target: Classifier
    target_scores: Tensor
    is_member: Tensor
    references: ReferenceModels | None
    train_accuracy: float
    test_accuracy: float
    mode: str
    seconds: dict[str, float] = field(default_factory=dict)
    assumptions: list[str] = field(default_factory=list)


def _pool(data: Dataset) -> tuple[Tensor, Tensor]:
    return torch.cat([data.x_train, data.x_test]), torch.cat([data.y_train, data.y_test])


def _accuracies(scores: Tensor, y: Tensor, member: Tensor) -> tuple[float, float]:
    pred = scores.argmax(dim=1)
    return metrics.accuracy(pred[member], y[member]), metrics.accuracy(pred[~member], y[~member])


def membership_game(
    data: Dataset,
    recipe: Recipe,
    *,
    train_size: int,
    references: int = 16,
    seed: int = 0,
    cache_dir: str | None = None,
    progress: Progress | None = None,
    executor: Any = None,
) -> MembershipSetup:
    """The membership game on ``2 * train_size`` records drawn (seeded) from ``data``'s train and test splits;
    ``executor`` (:mod:`bastion.scale`) trains the reference models, one task per model."""
    x, y = _pool(data)
    if isinstance(train_size, bool) or not isinstance(train_size, int) or train_size < 2:
        raise UsageError(f"train_size must be a whole number >= 2, got {train_size!r}")
    if 2 * train_size > x.shape[0]:
        raise UsageError(
            f"the game needs a population of 2 x {train_size} records but the data has {x.shape[0]}: "
            f"choose train_size <= {x.shape[0] // 2}"
        )
    g = torch.Generator().manual_seed(int(seed))
    pick = torch.randperm(x.shape[0], generator=g)[: 2 * train_size].sort().values
    pop = Dataset(f"{data.name}[population]", x[pick], y[pick], x[:0], y[:0], data.bounds, data.n_classes)
    member = half_mask(pop.x_train.shape[0], seed, -1)  # the target's half, independent of the references'
    start = time.perf_counter()
    target = recipe.train(
        Dataset(pop.name, pop.x_train[member], pop.y_train[member], x[:0], y[:0], data.bounds, data.n_classes),
        seed=seed,
    )
    t_target = time.perf_counter() - start
    refs = train_references(
        pop, recipe, references, seed=seed, cache_dir=cache_dir, progress=progress, executor=executor
    )
    z = scores_of(target, pop.x_train)
    tr, te = _accuracies(z, pop.y_train, member)
    return MembershipSetup(
        pop,
        target,
        z,
        member,
        refs,
        tr,
        te,
        "game",
        {"target": t_target, "references": sum(refs.seconds)},
        [f"population of {2 * train_size} records, the target trained on a random half"],
    )


def membership_audit(
    model: Classifier,
    data: Dataset,
    *,
    recipe: Recipe | None = None,
    references: int = 0,
    seed: int = 0,
    cache_dir: str | None = None,
    progress: Progress | None = None,
    executor: Any = None,
) -> MembershipSetup:
    """Audit mode: ``model`` scored on ``data``'s train split (taken as its members) and test split (non-members);
    with ``references`` > 0, reference models of ``recipe`` on random halves of the union (trained on ``executor``,
    :mod:`bastion.scale`, one task per model)."""
    x, y = _pool(data)
    member = torch.zeros(x.shape[0], dtype=torch.bool)
    member[: data.x_train.shape[0]] = True
    if not bool(member.any()) or bool(member.all()):
        raise UsageError("membership needs both a training split (members) and a test split (non-members)")
    pop = Dataset(f"{data.name}[train+test]", x, y, x[:0], y[:0], data.bounds, data.n_classes)
    refs = None
    if references:
        if recipe is None:
            raise UsageError("reference models need the model's training recipe: give arch= or a training function")
        refs = train_references(
            pop, recipe, references, seed=seed, cache_dir=cache_dir, progress=progress, executor=executor
        )
    z = scores_of(model, x)
    tr, te = _accuracies(z, y, member)
    return MembershipSetup(
        pop,
        model,
        z,
        member,
        refs,
        tr,
        te,
        "audit",
        {},
        [
            "members are the data's training split and non-members its test split: the model is "
            "assumed to have been trained on exactly the training split"
        ],
    )


def run_membership_attacks(setup: MembershipSetup, attacks: Sequence[MembershipAttack]) -> dict[str, dict[str, Any]]:
    """Each attack's :func:`evaluate_membership` on the setup's population, by attack name (a repeated name gets
    a suffix); each result also carries ``seconds`` and ``params``."""
    from .base import evaluate_membership

    out: dict[str, dict[str, Any]] = {}
    y = setup.population.y_train
    for attack in attacks:
        if attack.needs_references and setup.references is None:
            raise UsageError(f"the {attack.name} attack needs reference models: ask for some (references > 0)")
        start = time.perf_counter()
        attack.fit(setup.references)
        if attack.needs_model:
            scores = attack.score(setup.target, setup.population.x_train, y)
        else:
            scores = attack.score_from(setup.target_scores, y, output=setup.target.output)
        result = evaluate_membership(scores, setup.is_member)
        result["seconds"] = time.perf_counter() - start
        result["params"] = attack.params()
        name, i = attack.name, 2
        while name in out:
            name, i = f"{attack.name}-{i}", i + 1
        out[name] = result
    return out
