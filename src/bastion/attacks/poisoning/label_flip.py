"""Label flipping: the attacker changes the labels of a share of the training records, never the inputs.

Threat model: the attacker controls the *labels* of ``rate`` of the training records (a crowd-sourced or
outsourced labelling step) and nothing else; it wants the trained model to be less accurate (availability) or,
for ``pair``, to confuse one class with another. Three strategies (:class:`LabelFlip`, ``strategy=``):

- ``random`` — the baseline of Biggio, Nelson & Laskov 2011 ("Support Vector Machines Under Adversarial Label
  Noise", ACML): ``rate`` of the records, drawn uniformly, each get a uniformly drawn *other* class;
- ``pair`` — class-pair targeted flipping: records of class ``source`` are relabelled ``target`` (``rate`` is a
  share of the whole training split, so at most the source class's share);
- ``loss-max`` — a loss-maximising choice of which labels to flip against a linear model, after Xiao, Xiao &
  Eckert 2012 ("Adversarial Label Flips Attack on Support Vector Machines", ECAI; *ALFA*). The attacker knows
  the training data and the model family (here multinomial logistic regression on the flattened inputs, the
  surrogate: scikit-learn's ``LogisticRegression(C=surrogate_c)``) and wants the model trained on the flipped
  labels (``f``) to disagree as much as possible with the clean one (``f0``). ALFA alternates two steps until
  the flips stop changing (at most ``rounds`` times):

  1. fit ``f`` on the currently flipped labels;
  2. re-choose the ``k`` flips: for each record ``i`` and wrong class ``c``, the score
     ``[l(f, x_i, c) - l(f0, x_i, c)] - [l(f, x_i, y_i) - l(f0, x_i, y_i)]`` (``l`` the log-loss) is low when
     the tainted model fits label ``c`` much better than the clean model does — flips that drag the tainted
     model away from the clean one; each record takes its lowest-scoring class and the ``k`` lowest records
     are flipped (ALFA's linear relaxation with the budget, solved exactly for a fixed ``f``).

  The start (where ``f = f0`` would make every score 0) is Biggio et al.'s adversarial heuristic: flip the
  ``k`` records whose current label the clean model is most sure of (the largest correct-class margin) to
  the class it finds least likely — the flips with the largest loss, and so the strongest pull on a refitted
  linear model. On ``breast-cancer`` this start alone costs a logistic model far more accuracy than random
  flips at the same rate, and the alternation more again (``benchmarks/poisoning_attacks.py``).

Shapes: any (N, *input_shape) data; ``loss-max`` flattens inputs to (N, prod(input_shape)) for the surrogate.
The inputs are never changed; ``PoisonedData.target`` is ``target`` for ``pair``, else ``None``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ...data.dataset import Dataset
from ...errors import UsageError
from .base import PoisonedData, PoisoningAttack, register_poisoning

__all__ = ["STRATEGIES", "LabelFlip", "alfa_flips"]

STRATEGIES = ("random", "pair", "loss-max")


@register_poisoning("label-flip")
@dataclass(kw_only=True, eq=False, repr=False)
class LabelFlip(PoisoningAttack):
    """Flip the labels of ``rate`` of the training records (random, class pair, or loss-maximising).

    Args (besides ``rate``, ``seed``, ``generator``):
        strategy: ``random`` (default), ``pair`` or ``loss-max`` (see the module docstring).
        source, target: ``pair`` only — records of class ``source`` are relabelled ``target``.
        rounds: ``loss-max`` only — the most ALFA alternations (refit, re-choose); 1 keeps the start.
        surrogate_c: ``loss-max`` only — the inverse regularisation ``C`` of the logistic surrogate.
    """

    strategy: str = "random"
    source: int | None = None
    rounds: int = 10
    surrogate_c: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.strategy not in STRATEGIES:
            raise UsageError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        for name in ("source", "target"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise UsageError(f"{name} must be a class index (an integer >= 0), got {value!r}")
        if self.strategy == "pair":
            if self.source is None or self.target is None:
                raise UsageError("strategy='pair' needs source= and target= (relabel class source as target)")
            if self.source == self.target:
                raise UsageError(f"source and target are both {self.source}: a pair flip needs two different classes")
        elif self.source is not None or self.target is not None:
            raise UsageError(f"source and target are for strategy='pair'; strategy={self.strategy!r} takes neither")
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise UsageError(f"rounds must be an integer >= 1, got {self.rounds!r}")
        c = self.surrogate_c
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c <= 0:
            raise UsageError(f"surrogate_c (the logistic surrogate's C) must be a positive number, got {c!r}")
        self.surrogate_c = float(c)

    def _check_data(self, data: Dataset) -> None:
        if self.source is not None and self.source >= data.n_classes:
            raise UsageError(f"the source label must be a class index in [0, {data.n_classes - 1}], got {self.source}")

    def _poison(self, data: Dataset, generator: torch.Generator) -> PoisonedData:
        y = data.y_train
        n, n_classes = y.shape[0], data.n_classes
        k = self._count(n)
        extra: dict[str, object] = {}
        if self.strategy == "random":
            pick = torch.randperm(n, generator=generator)[:k].sort().values
            shift = torch.randint(1, n_classes, (k,), generator=generator)
            new = (y[pick] + shift) % n_classes
        elif self.strategy == "pair":
            candidates = torch.nonzero(y.eq(int(self.source or 0))).flatten()
            too_few = (
                f"a rate of {self.rate:g} flips {k} records but class {self.source} has {candidates.numel()} "
                f"of {n}: lower the rate to at most {candidates.numel() / n:.3f}"
            )
            pick = self._draw(candidates, k, generator, too_few=too_few)
            new = torch.full_like(pick, int(self.target))  # type: ignore[arg-type]  # checked in __post_init__
        else:
            order = torch.randperm(n, generator=generator)  # breaks ties between equal scores reproducibly
            pick, new, rounds_run = alfa_flips(
                data.x_train, y, k, n_classes=n_classes, rounds=self.rounds, c=self.surrogate_c, order=order
            )
            extra = {"surrogate": f"LogisticRegression(C={self.surrogate_c:g})", "rounds_run": rounds_run}
        original = y[pick].clone()
        y[pick] = new
        return self._changed_in_place(
            data,
            pick,
            original,
            new,
            target=int(self.target) if self.strategy == "pair" else None,  # type: ignore[arg-type]
            extra=extra,
        )


def _log_loss(model: object, x: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, n_classes) log-loss of a fitted logistic model for every label (classes it never saw: a large loss)."""
    proba = np.full((x.shape[0], n_classes), 1e-12)
    proba[:, model.classes_] = model.predict_proba(x)  # type: ignore[attr-defined]
    return -np.log(np.clip(proba, 1e-12, 1.0))


def _fit(x: np.ndarray, y: np.ndarray, c: float) -> object:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(C=c, max_iter=1000).fit(x, y)


def _choose(score: np.ndarray, y: np.ndarray, k: int, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` records with the lowest score over their wrong classes, and each one's lowest-scoring class."""
    score = score.copy()
    score[np.arange(y.shape[0]), y] = np.inf  # a flip changes the label
    best_class = score.argmin(axis=1)
    best = score[np.arange(y.shape[0]), best_class]
    ranked = order[np.argsort(best[order], kind="stable")]
    pick = np.sort(ranked[:k])
    return pick, best_class[pick]


def alfa_flips(
    x: Tensor, y: Tensor, k: int, *, n_classes: int, rounds: int = 10, c: float = 1.0, order: Tensor | None = None
) -> tuple[Tensor, Tensor, int]:
    """ALFA's label flips against a logistic model (Xiao et al. 2012; see the module docstring).

    Args:
        x: (N, *input_shape) training inputs (flattened for the surrogate). y: (N,) their labels.
        k: how many labels to flip. n_classes: the number of classes. rounds: the most alternations.
        c: the surrogate's inverse regularisation. order: (N,) a permutation that breaks ties between equal
            scores (default: index order).

    Returns:
        ``(indices, new_labels, rounds_run)``: (k,) increasing positions and (k,) their flipped labels.
    """
    xs = x.reshape(x.shape[0], -1).double().numpy()
    ys = y.numpy()
    if np.unique(ys).size < 2:
        raise UsageError("loss-max flipping fits a classifier: the training labels need at least 2 classes")
    perm = np.arange(ys.shape[0]) if order is None else order.numpy()
    loss0 = _log_loss(_fit(xs, ys, c), xs, n_classes)
    pick, new = _choose(-loss0, ys, k, perm)  # the start: the largest loss under the clean model
    rounds_run = 1
    for _ in range(rounds - 1):
        flipped = ys.copy()
        flipped[pick] = new
        loss = _log_loss(_fit(xs, flipped, c), xs, n_classes)
        gain = (loss - loss0) - (loss - loss0)[np.arange(ys.shape[0]), ys][:, None]
        next_pick, next_new = _choose(gain, ys, k, perm)
        rounds_run += 1
        if np.array_equal(next_pick, pick) and np.array_equal(next_new, new):
            break
        pick, new = next_pick, next_new
    return torch.as_tensor(pick, dtype=torch.long), torch.as_tensor(new, dtype=torch.long), rounds_run
