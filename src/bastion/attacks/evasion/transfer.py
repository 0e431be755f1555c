"""Transfer attack: craft adversarial examples on a white-box surrogate, replay them on the target
(Papernot et al. 2017, "Practical Black-Box Attacks against Machine Learning"; Dong et al. 2018 for
MI-FGSM, whose momentum makes the examples transfer better).

Threat model: the target's ``norm`` ball of radius ``eps`` and bounds; the target is only queried
(no gradients): to label the surrogate's training data (:func:`train_surrogate`) and once per batch
to replay the adversarial examples. Inputs (N, *input_shape), labels (N,).

``budget.extra`` / ``AttackResult.extra`` report ``surrogate_success`` and ``transfer_success``
(per sample: the attack fooled the surrogate / the target) and their rates, and the surrogate's
backward passes (``surrogate_gradients``; ``AttackResult.gradients`` stays 0: none on the target).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from ...errors import UsageError
from ...models.base import Classifier
from ...models.torch import TorchClassifier
from ...models.training import TrainConfig, train_module
from ...seeding import draw_seed
from ...threat import ThreatModel
from ..base import ATTACKS, Attack, AttackBatch, Budget, get_attack, positive, register

__all__ = ["TransferAttack", "surrogate_mlp", "train_surrogate"]


class _Rescale(nn.Module):
    def __init__(self, lo: float, hi: float) -> None:
        super().__init__()
        self.lo, self.span = lo, hi - lo

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.lo) / self.span


def surrogate_mlp(
    input_shape: tuple[int, ...], n_classes: int, bounds: tuple[float, float] = (0.0, 1.0), hidden: int = 256
) -> nn.Module:
    """A 2-hidden-layer MLP for any input shape, rescaling ``bounds`` to [0, 1] inside."""
    d = math.prod(input_shape)
    return nn.Sequential(
        _Rescale(*bounds),
        nn.Flatten(),
        nn.Linear(d, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, n_classes),
    )


def train_surrogate(
    target: Classifier,
    x_query: Tensor,
    *,
    arch: str = "mlp",
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    hidden: int = 256,
    seed: int = 0,
    query_batch: int = 1000,
) -> TorchClassifier:
    """Train a white-box surrogate of ``target`` on ``x_query`` labelled by the target's predictions.

    The target is queried once per ``query_batch`` inputs (``x_query.shape[0]`` counted queries).
    ``arch``: 'mlp' (:func:`surrogate_mlp`) or a registered architecture name taking the target's
    input shape. Initialisation runs under ``fork_rng`` with ``seed`` and batches are shuffled by a
    seeded generator: the global RNG is left alone.
    """
    from ...models.architectures import build_architecture
    from ...models.base import validate_inputs

    validate_inputs(target, x_query, name="x_query")
    for name, v in (("epochs", epochs), ("batch_size", batch_size), ("hidden", hidden), ("query_batch", query_batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UsageError(f"{name} must be an integer >= 1, got {v!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise UsageError(f"lr must be a number > 0, got {lr!r}")
    x_query = x_query.detach()
    with torch.no_grad(), target.attack_mode():
        labels = torch.cat(
            [target.logits(x_query[i : i + query_batch]).argmax(dim=1) for i in range(0, x_query.shape[0], query_batch)]
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if arch == "mlp":
            module = surrogate_mlp(tuple(target.input_shape), target.n_classes, target.bounds, hidden)
        else:
            module, spec = build_architecture(arch)
            if spec.input_shape != tuple(target.input_shape) or spec.n_classes != target.n_classes:
                raise UsageError(
                    f"architecture {arch!r} takes {spec.input_shape} -> {spec.n_classes} classes; the target "
                    f"takes {tuple(target.input_shape)} -> {target.n_classes}"
                )
    with torch.enable_grad():
        train_module(
            module,
            x_query.to(torch.float32),
            labels,
            TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed),
        )
    for p in module.parameters():
        p.requires_grad_(False)
    return TorchClassifier(
        module, bounds=target.bounds, n_classes=target.n_classes, input_shape=tuple(target.input_shape), output="logits"
    )


@register("transfer")
@dataclass(kw_only=True, eq=False, repr=False)
class TransferAttack(Attack):
    """Attack a white-box surrogate, replay on the (black-box) target.

    Args:
        surrogate: a white-box Classifier with the target's input shape and classes. ``None``: one is
            trained at each call with :func:`train_surrogate` on the attacked batch and
            ``n_augment`` noisy copies of it (uniform noise in the eps-ball), labelled by the target
            — a data-free fallback; a surrogate trained on held-out data transfers better.
        attack: the white-box attack run on the surrogate: a registered name (built with this
            attack's eps and norm and ``steps``) or an :class:`Attack` with the same eps and norm.
        eps, norm: the budget ('linf' or 'l2'). steps: iterations of the named attack.
        surrogate_epochs, n_augment: training of the fallback surrogate.
    """

    norms = ("linf", "l2")
    needs_gradients = False

    surrogate: Classifier | None = None
    attack: str | Attack = "mifgsm"
    steps: int = positive(10, integer=True)
    surrogate_epochs: int = positive(10, integer=True)
    n_augment: int = positive(4, integer=True, allow_zero=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        surrogate, attack = self.surrogate, self.attack
        if surrogate is not None and not isinstance(surrogate, Classifier):
            raise UsageError(f"surrogate must be a Classifier, got {type(surrogate).__name__}")
        if surrogate is not None and not surrogate.white_box:
            raise UsageError(
                f"the surrogate {type(surrogate).__name__} is not white-box: a transfer attack needs its gradients"
            )
        self._inner = self._resolve(attack)

    def _resolve(self, attack: str | Attack) -> Attack:
        """The white-box attack run on the surrogate (built from its name with this attack's budget)."""
        if isinstance(attack, str):
            if attack.strip().lower() == self.name:
                raise UsageError("the surrogate attack cannot be 'transfer' itself")
            cls = ATTACKS.get(attack.strip().lower())
            params = inspect.signature(cls.__init__).parameters if cls is not None else {}
            extra = {"steps": self.steps} if "steps" in params else {}
            return get_attack(attack, eps=self.eps, norm=self.norm, seed=self.seed, generator=self.generator, **extra)
        if isinstance(attack, Attack):
            if attack.eps != self.eps or attack.norm != self.norm:
                raise UsageError(
                    f"the surrogate attack has ({attack.norm}, eps={attack.eps}) but the transfer attack "
                    f"({self.norm}, eps={self.eps}): give both the same budget"
                )
            return attack
        raise UsageError(f"attack must be an attack name or an Attack, got {type(attack).__name__}")

    def _surrogate(self, model: Classifier, x: Tensor, threat: ThreatModel, generator: torch.Generator) -> Classifier:
        if self.surrogate is not None:
            s = self.surrogate
            if tuple(s.input_shape) != tuple(model.input_shape) or s.n_classes != model.n_classes:
                raise UsageError(
                    f"the surrogate takes {tuple(s.input_shape)} -> {s.n_classes} classes but the target "
                    f"{tuple(model.input_shape)} -> {model.n_classes}"
                )
            return s
        copies = [x]
        for _ in range(self.n_augment):
            u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
            copies.append(threat.project(x, x + u * threat.radius))
        seed = draw_seed(generator, x.device)
        return train_surrogate(model, torch.cat(copies), epochs=self.surrogate_epochs, seed=seed)

    def _attack(self, batch: AttackBatch) -> Tensor:
        x, threat, budget = batch.x, batch.threat, batch.budget
        surrogate = self._surrogate(batch.model, x, threat, batch.generator)
        inner_budget = Budget()
        with surrogate.attack_mode(), torch.enable_grad():
            x_adv = self._inner._attack(replace(batch, model=surrogate, budget=inner_budget))
        x_adv = threat.project(x, x_adv.detach())
        with torch.no_grad():
            on_surrogate = batch.is_adversarial(surrogate.logits(x_adv))
            on_target = batch.is_adversarial(batch.model.logits(x_adv))  # the replay: one batched query
        budget.add_per_sample("surrogate_success", on_surrogate)
        budget.add_per_sample("transfer_success", on_target)
        for key in ("surrogate_success", "transfer_success"):
            budget.extra[f"{key}_rate"] = float(torch.cat(budget.per_sample[key]).float().mean())
        budget.extra["surrogate_gradients"] = budget.extra.get("surrogate_gradients", 0) + inner_budget.backward
        return x_adv
