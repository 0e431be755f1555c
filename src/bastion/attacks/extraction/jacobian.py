"""Jacobian-based dataset augmentation (Papernot, McDaniel, Goodfellow, Jha, Celik & Swami 2017, "Practical
Black-Box Attacks against Machine Learning", ASIA CCS, Algorithm 1): grow a substitute's training set where the
substitute's decision changes fastest, labelled by the victim.

Threat model: a black-box victim answering with **labels** (the paper's oracle ``O~``; probabilities, when given,
are not used) and a small set of natural seed inputs (the paper: 150 test images, 10 per class for MNIST). Round
``rho`` = 0, 1, ...:

    D     <- {(x, O~(x)) : x in S_rho}                            (only the new points are queried)
    F     <- train(F, D)                                          (``epochs`` epochs, warm-started)
    S_rho+1 <- S_rho  u  {clip(x + lambda_rho * sign(J_F(x)[O~(x)])) : x in S_rho}

with the periodic step ``lambda_rho = lambda * (-1) ** floor(rho / tau)`` (section 6.1: stepping back once the
points have left the data's neighbourhood), ``J_F(x)[c]`` the gradient of the substitute's logit ``c`` with respect
to ``x`` and the result clipped to the victim's bounds. The set doubles each round; when the next augmentation
would overrun the budget a seeded random subset of the new points of exactly the remaining size is kept (the
paper's reservoir sampling, section 6.2, to bound queries), so ``queries`` never exceeds the budget. The curve has
one point after each round's training (``checkpoints`` are not taken).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ...errors import UsageError
from ...models.base import Classifier, validate_inputs
from ...models.torch import TorchClassifier
from ...seeding import draw_seed
from .base import Evaluation, ExtractionAttack, query_victim, register_extraction, train_copy
from .copies import CopyArch, VictimCopy, check_copy_arch

__all__ = ["JacobianAugmentation", "jacobian_step"]


def jacobian_step(module: nn.Module, x: Tensor, labels: Tensor, lam: float, bounds: tuple[float, float]) -> Tensor:
    """``clip(x + lam * sign(d F(x)[labels] / d x))``: the augmentation of ``x`` (N, *input_shape) along the sign of
    the substitute's Jacobian row of each input's label (N,)."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = module(x)
        (grad,) = torch.autograd.grad(logits.gather(1, labels[:, None]).sum(), x)
    return (x.detach() + lam * grad.sign()).clamp(*bounds)


@register_extraction("jacobian")
@dataclass(kw_only=True, eq=False, repr=False)
class JacobianAugmentation(ExtractionAttack):
    """Train a substitute on a seed set grown by Jacobian-based augmentation (Papernot et al. 2017).

    Args:
        seed_set: the attacker's natural inputs (N, *input_shape) inside the victim's bounds; ``n_seed`` of them (a
            seeded random subset when N is larger) are the initial set S_0.
        n_seed: size of S_0 (the paper: 150).
        copy: the substitute's architecture: a registered name, a module factory, or ``None`` (a 2-hidden-layer MLP).
        lam: the augmentation step lambda (the paper: 0.1), in input units. tau: rounds between sign flips of
            lambda (3). rounds: the most augmentation rounds (the paper: 6); the budget may stop it earlier.
        epochs, batch_size, lr: substitute training per round (Adam on the one trainer).
        seed, generator: S_0's choice, the reservoir subsets and the substitute's initialisation.
    """

    takes_checkpoints: ClassVar[bool] = False

    seed_set: Tensor | None = None
    n_seed: int = 150
    copy: CopyArch = None
    lam: float = 0.1
    tau: int = 3
    rounds: int = 6
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.seed_set, Tensor):
            raise UsageError(
                "Jacobian augmentation grows a substitute's data from natural seed inputs: pass seed_set= "
                "(e.g. 150 inputs of the victim's domain)"
            )
        self._check_numbers(whole=("n_seed", "tau", "rounds", "epochs", "batch_size"), positive=("lam", "lr"))
        check_copy_arch(self.copy)

    def _check_inputs(self, model: Classifier, budget: int) -> None:
        if self.seed_set is not None:
            validate_inputs(model, self.seed_set, name="seed_set")

    def min_budget(self, model: Classifier) -> int:
        return min(self.n_seed, self.seed_set.shape[0]) if self.seed_set is not None else 1

    def _extract(
        self, model: Classifier, budget: int, checkpoints: list[int], evaluation: Evaluation, generator: torch.Generator
    ) -> tuple[TorchClassifier, dict[str, Any]]:
        if self.seed_set is None:  # pragma: no cover - refused in __post_init__
            raise UsageError("pass seed_set=")
        seeds = self.seed_set.detach().float()
        if seeds.shape[0] > self.n_seed:
            seeds = seeds[torch.randperm(seeds.shape[0], generator=generator)[: self.n_seed]]
        copy = VictimCopy(self.copy, model, draw_seed(generator))
        x, labels = seeds, self._labels(model, seeds)
        sizes = []
        for rho in range(self.rounds + 1):
            targets = torch.nn.functional.one_hot(labels, model.n_classes).float()
            train_copy(
                copy.module, x, targets, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, generator=generator
            )
            sizes.append(int(x.shape[0]))
            evaluation.point(copy.snapshot(), x.shape[0])
            left = budget - x.shape[0]
            if rho == self.rounds or left <= 0:
                break
            lam = self.lam * (-1) ** (rho // self.tau)
            new = jacobian_step(copy.module, x, labels, lam, model.bounds)
            if new.shape[0] > left:  # reservoir: a random subset that spends the budget exactly
                new = new[torch.randperm(new.shape[0], generator=generator)[:left]]
            x, labels = torch.cat([x, new]), torch.cat([labels, self._labels(model, new)])
        return copy.freeze(), {"set_sizes": sizes, "rounds": len(sizes) - 1}

    @staticmethod
    def _labels(model: Classifier, x: Tensor) -> Tensor:
        return query_victim(model, x, labels_only=True).argmax(1)
