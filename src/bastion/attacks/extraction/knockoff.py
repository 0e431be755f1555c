"""Knockoff Nets (Orekondy, Schiele & Fritz 2019, "Knockoff Nets: Stealing Functionality of Black-Box Models",
CVPR): train a copy on the victim's answers to inputs drawn from a surrogate pool.

Threat model: a black-box victim answering with probabilities (or, ``labels_only``, with labels); the attacker
holds an unlabelled pool of natural inputs — the victim's domain, another data set of the same shape, or nothing
(uniform noise in the bounds) — and a copy architecture of its choosing. Each pool input is queried at most once.

- ``strategy="random"`` (section 4.1.1): query pool inputs uniformly at random without replacement.
- ``strategy="adaptive"`` (section 4.1.2): a gradient bandit chooses which part of the pool to query. The actions
  are the pool's own classes when ``pool_labels`` are given (the paper's label hierarchy, one level), else k-means
  clusters of the pool's pixels (:func:`kmeans`). Round t samples actions from the policy ``pi_t = softmax(H_t)``,
  one unused pool input of each, queries the victim (``y_t``), takes one online training step of the copy and
  scores each answer with the paper's three rewards: certainty ``y_(1) - y_(2)`` (margin of the victim's top two),
  diversity ``sum_k max(0, y_{t,k} - mean of y_k over the last reward_window answers)`` and the copy's loss
  ``-sum_k y_k log yhat_k``. Each reward is standardised by its running mean and deviation and the three are
  averaged into ``r_t``; with the running mean ``rbar_t`` as baseline the preferences follow the gradient-bandit
  rule ``H(a_t) += alpha (r_t - rbar_t)(1 - pi(a_t))``, ``H(a) -= alpha (r_t - rbar_t) pi(a)`` for the other
  actions (Sutton & Barto 2018, section 2.8). An exhausted action's probability is 0.

The copy is trained with soft cross-entropy on the transfer set (the victim's probability vectors, eq. 1; one-hot
rows for ``labels_only``) on the one trainer (:func:`~bastion.attacks.extraction.base.train_copy`). At every
checkpoint (``extract(..., checkpoints=[...])``) a copy is trained from the same initialisation on all the answers
so far and measured: one run gives the whole fidelity curve, and ``extra["checkpoint_seconds"]`` the time at each.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ...errors import UsageError
from ...models.base import Classifier, validate_inputs
from ...models.torch import TorchClassifier
from ...seeding import draw_seed
from .base import Evaluation, ExtractionAttack, query_victim, register_extraction, soft_cross_entropy, train_copy
from .copies import CopyArch, VictimCopy, check_copy_arch

__all__ = ["AdaptiveKnockoffNets", "KnockoffNets", "kmeans"]


def kmeans(x: Tensor, k: int, generator: torch.Generator, iters: int = 50) -> Tensor:
    """Lloyd's k-means on the rows of ``x`` (N, D) with k-means++ seeding from ``generator``; the cluster of each row
    (N,), int64 in [0, k) (a cluster may end up empty)."""
    n = x.shape[0]
    k = min(k, n)
    x = x.double()
    centres = x[torch.randint(n, (1,), generator=generator)]
    for _ in range(1, k):
        d2 = torch.cdist(x, centres).min(dim=1).values.square()
        weights = d2 if float(d2.sum()) > 0 else torch.ones(n, dtype=torch.float64)
        centres = torch.cat([centres, x[torch.multinomial(weights, 1, generator=generator)]])
    labels = torch.cdist(x, centres).argmin(dim=1)
    for _ in range(iters):
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
        new = torch.cdist(x, centres).argmin(dim=1)
        if torch.equal(new, labels):
            break
        labels = new
    return labels


class _Rewards:
    """The adaptive strategy's reward (certainty, diversity, loss; each standardised by its running moments, then
    averaged) and its running baseline."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.recent: list[Tensor] = []
        self.n, self.mean, self.m2 = 0, torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
        self.baseline, self.t = 0.0, 0

    def __call__(self, y: Tensor, y_hat: Tensor) -> tuple[float, float]:
        """The reward of one answer ``y`` (K,) given the copy's probabilities ``y_hat`` (K,); and the baseline before
        it."""
        top = torch.topk(y.double(), 2).values
        certainty = float(top[0] - top[1])
        recent = torch.stack(self.recent).double().mean(0) if self.recent else torch.zeros_like(y, dtype=torch.float64)
        diversity = float((y.double() - recent).clamp_min(0).sum())
        loss = float(-(y.double() * y_hat.double().clamp_min(1e-12).log()).sum())
        self.recent = [*self.recent[-(self.window - 1) :], y] if self.window > 1 else [y]
        raw = torch.tensor([certainty, diversity, loss], dtype=torch.float64)
        self.n += 1  # Welford's running moments
        delta = raw - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (raw - self.mean)
        std = (self.m2 / self.n).sqrt()
        reward = float(torch.where(std > 0, (raw - self.mean) / std.clamp_min(1e-12), 0.0).mean())
        baseline = self.baseline
        self.t += 1
        self.baseline += (reward - self.baseline) / self.t
        return reward, baseline


@register_extraction("knockoff")
@dataclass(kw_only=True, eq=False, repr=False)
class KnockoffNets(ExtractionAttack):
    """Steal a copy by querying a surrogate pool (Orekondy et al. 2019): random or adaptive (bandit) selection.

    Args:
        pool: the attacker's inputs (N, *input_shape) inside the victim's bounds; ``None``: uniform noise in the
            bounds (random strategy only). The budget must not exceed N.
        pool_labels: (N,) the pool's own class labels, the adaptive strategy's actions; ``None``: k-means clusters.
        copy: the copy's architecture: a registered name, a module factory, or ``None`` (a two-hidden-layer MLP).
        strategy: ``"random"`` or ``"adaptive"``.
        labels_only: train on the victim's labels (one-hot) instead of its probabilities (a label-only API).
        epochs, batch_size, lr: training of the copy at each checkpoint (Adam, soft cross-entropy).
        n_clusters: adaptive without ``pool_labels``: k of the k-means over the pool.
        bandit_lr: adaptive: the gradient bandit's step size alpha.
        query_batch: adaptive: queries per bandit round (the copy takes one online step per round).
        reward_window: adaptive: the diversity reward's window Delta (answers).
        seed, generator: the pool's order, the clusters, the policy's draws and the copy's initialisation.
    """

    pool: Tensor | None = None
    pool_labels: Tensor | None = None
    copy: CopyArch = None
    strategy: str = "random"
    labels_only: bool = False
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    n_clusters: int = 10
    bandit_lr: float = 0.1
    query_batch: int = 16
    reward_window: int = 25

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_numbers(
            whole=("epochs", "batch_size", "n_clusters", "query_batch", "reward_window"), positive=("lr", "bandit_lr")
        )
        if self.strategy not in ("random", "adaptive"):
            raise UsageError(f"strategy must be 'random' or 'adaptive', got {self.strategy!r}")
        if self.pool is not None and not isinstance(self.pool, Tensor):
            raise UsageError(f"pool must be a tensor of inputs (N, *input_shape), got {type(self.pool).__name__}")
        if self.pool_labels is not None:
            if self.pool is None:
                raise UsageError("pool_labels need the pool they label")
            lab = self.pool_labels
            if not isinstance(lab, Tensor) or lab.dim() != 1 or lab.is_floating_point() or len(lab) != len(self.pool):
                raise UsageError(f"pool_labels must be integer labels of shape ({len(self.pool)},), one per pool input")
        if self.strategy == "adaptive" and self.pool is None:
            raise UsageError("the adaptive strategy chooses among pool inputs: pass pool= (natural inputs)")
        check_copy_arch(self.copy)
        self.labels_only = bool(self.labels_only)

    def _check_inputs(self, model: Classifier, budget: int) -> None:
        if self.pool is None:
            return
        validate_inputs(model, self.pool, name="pool")
        if budget > self.pool.shape[0]:
            raise UsageError(
                f"the budget ({budget}) exceeds the pool's {self.pool.shape[0]} inputs: knockoff queries each pool "
                "input once; give a larger pool or a smaller budget"
            )

    def _pool(self, model: Classifier, budget: int, generator: torch.Generator) -> Tensor:
        if self.pool is None:
            lo, hi = model.bounds
            return lo + (hi - lo) * torch.rand(budget, *model.input_shape, generator=generator)
        return self.pool.detach().float()

    def _extract(
        self, model: Classifier, budget: int, checkpoints: list[int], evaluation: Evaluation, generator: torch.Generator
    ) -> tuple[TorchClassifier, dict[str, Any]]:
        pool = self._pool(model, budget, generator)
        run = _Run(self, model, pool, draw_seed(generator), generator)
        start, seconds = time.perf_counter(), []
        for checkpoint in checkpoints:
            if self.strategy == "random":
                run.query(run.order[run.n : checkpoint])
            else:
                run.adaptive_until(checkpoint)
            run.retrain()
            evaluation.point(run.copy.snapshot(), run.n)
            seconds.append(round(time.perf_counter() - start, 3))
        extra: dict[str, Any] = {"strategy": self.strategy, "checkpoint_seconds": seconds}
        if self.strategy == "adaptive":
            extra["policy"] = torch.softmax(run.preferences, 0).tolist()
            extra["actions"] = int(run.preferences.numel())
        return run.copy.snapshot(), extra


class _Run:
    """One knockoff run's state: the pool, what was queried, the copy and (adaptive) the bandit."""

    def __init__(
        self, attack: KnockoffNets, model: Classifier, pool: Tensor, init_seed: int, generator: torch.Generator
    ) -> None:
        self.attack, self.model, self.pool, self.g = attack, model, pool, generator
        self.order = torch.randperm(pool.shape[0], generator=generator)
        self.queried: list[Tensor] = []  # pool indices, in query order
        self.answers: list[Tensor] = []
        self.n = 0
        self.copy = VictimCopy(attack.copy, model, init_seed)
        if attack.strategy == "adaptive":
            self._setup_bandit()

    def query(self, index: Tensor) -> Tensor:
        y = query_victim(self.model, self.pool[index], labels_only=self.attack.labels_only)
        self.queried.append(index)
        self.answers.append(y)
        self.n += int(index.numel())
        return y

    def retrain(self) -> None:
        """A copy from the run's initialisation trained on every answer so far."""
        a = self.attack
        self.copy.reset()
        x, y = self.pool[torch.cat(self.queried)], torch.cat(self.answers)
        train_copy(self.copy.module, x, y, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, generator=self.g)
        self.optimizer = torch.optim.Adam(self.copy.module.parameters(), lr=a.lr)

    # -- the adaptive strategy ---------------------------------------------------------------------
    def _setup_bandit(self) -> None:
        a = self.attack
        if a.pool_labels is not None:
            _, actions = torch.unique(a.pool_labels.cpu(), return_inverse=True)
        else:
            actions = kmeans(self.pool.flatten(1), a.n_clusters, self.g)
        self.members = [self.order[actions[self.order] == i] for i in range(int(actions.max()) + 1)]
        self.used = torch.zeros(len(self.members), dtype=torch.long)
        self.preferences = torch.zeros(len(self.members), dtype=torch.float64)
        self.rewards = _Rewards(a.reward_window)
        self.optimizer = torch.optim.Adam(self.copy.module.parameters(), lr=a.lr)

    def _policy(self) -> Tensor:
        left = torch.tensor([len(m) for m in self.members]) > self.used
        return torch.softmax(self.preferences.masked_fill(~left, -math.inf), 0)

    def adaptive_until(self, checkpoint: int) -> None:
        a = self.attack
        while self.n < checkpoint:
            actions = []
            for _ in range(min(a.query_batch, checkpoint - self.n)):
                act = int(torch.multinomial(self._policy(), 1, generator=self.g))
                actions.append((act, self.members[act][self.used[act]]))
                self.used[act] += 1
            y = self.query(torch.stack([i for _, i in actions]))
            x = self.pool[self.queried[-1]]
            module = self.copy.module
            with torch.enable_grad():  # the copy learns as it queries: one online step per round
                module.train()
                loss = soft_cross_entropy(module(x), y)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
            module.eval()
            with torch.no_grad():
                y_hat = torch.softmax(module(x), 1)
            for (act, _), yi, yh in zip(actions, y, y_hat):
                self._update(act, *self.rewards(yi, yh))

    def _update(self, action: int, reward: float, baseline: float) -> None:
        """The gradient-bandit rule on the preferences (Sutton & Barto 2018, eq. 2.12)."""
        pi = self._policy()
        step = self.attack.bandit_lr * (reward - baseline)
        one_hot = torch.zeros_like(pi)
        one_hot[action] = 1.0
        self.preferences = self.preferences + step * (one_hot - pi)


@register_extraction("knockoff-adaptive")
@dataclass(kw_only=True, eq=False, repr=False)
class AdaptiveKnockoffNets(KnockoffNets):
    """:class:`KnockoffNets` with ``strategy="adaptive"`` (the gradient-bandit query selection) by default."""

    strategy: str = "adaptive"
