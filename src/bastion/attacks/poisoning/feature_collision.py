"""Feature collision: Shafahi et al. 2018, "Poison Frogs! Targeted Clean-Label Poisoning Attacks on Neural
Networks" (NeurIPS).

Threat model: targeted and clean-label. The victim retrains (part of) a model the attacker knows on data the
attacker can *add* correctly labelled records to; the attacker wants one chosen test input (the *target*
``t``, ``target_index`` in the test split) classified as a chosen ``base_class``, and nothing else to change.
Shafahi's transfer-learning setting: a frozen, known feature extractor ``f`` (here the input of the classifier's
last linear layer, ``model.penultimate_layer``) under a linear head retrained on the poisoned set
(:func:`train_linear_head`).

Each poison starts from a base-class training image ``b`` and solves
``min_x ||f(x) - f(t)||^2 + beta * ||x - b||^2`` by forward-backward splitting (Shafahi Alg. 1):

- forward: a gradient step on the feature distance, ``x^ = x - lr * grad_x ||f(x) - f(t)||^2``;
- backward: the proximal step of the closeness term, ``x = (x^ + lr * beta * b) / (1 + lr * beta)``,
  clipped to the bounds.

``beta = beta0 * (D_f / D_in)^2`` (Shafahi Sec. 3: ``beta0 = 0.25`` with their 2048 features over the input's
dimension ``D_in``), for inputs in their own units. As in the authors' code, a step that does not lower the
objective is rejected and that poison's ``lr`` is multiplied by ``decay``; a poison stops when its relative change
is below ``tol`` (or after ``max_iter`` steps). The poison then lies on the base side of the input space (a
base-class image to the eye) and on the target in feature space, so a head fitted to it with the base label
moves the target to the base class.

Watermarking (Shafahi Sec. 4.2, for end-to-end training): ``watermark = gamma`` (they use 0.2-0.3) blends the
target into each base first, ``b <- (1 - gamma) * b + gamma * t``; the blended image is the start and the anchor
of the proximal step.

The poisons are *appended* to the training set with the base label: ``PoisonedData.indices`` are their positions
(after the clean records), ``source_indices`` the base images they were made from, and ``extra`` holds
``target_indices=[target_index]`` and ``adversarial_labels=[base_class]`` (what
:func:`~bastion.attacks.poisoning.evaluate_poisoning` reads for ``targets_hit``). The ``rate`` argument is not
read: ``n_poisons`` decides how many are added.

Shapes: the model's inputs (N, *input_shape); features (N, D_f).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ...data.dataset import Dataset
from ...errors import UsageError
from ...models.features import HasFeatures
from ...models.torch import TorchClassifier
from .base import PoisonedData, PoisoningAttack, register_poisoning

__all__ = ["FeatureCollision", "collide", "train_linear_head"]


def collide(
    model: HasFeatures,
    target: Tensor,
    bases: Tensor,
    *,
    layer: str,
    beta: float,
    lr: float,
    max_iter: int,
    decay: float = 0.5,
    tol: float = 1e-7,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> tuple[Tensor, Tensor]:
    """Shafahi's forward-backward splitting for every base at once (one ``lr`` per poison).

    Args:
        model: the feature model. target: (1, *input_shape). bases: (P, *input_shape) the anchors.
        layer: the feature layer. beta: the closeness weight. lr: the first step size. max_iter: the most steps.
        decay: a rejected step multiplies that poison's ``lr`` by it. tol: stop at a smaller relative change.

    Returns:
        ``(poisons, feature_distance)``: (P, *input_shape) inside ``bounds`` and (P,) ``||f(x) - f(t)||``.
    """
    lo, hi = bounds
    with torch.no_grad():
        t_feat = model.features(target, [layer])[0]

    def evaluate(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(P,) ``||f(x) - f(t)||^2``, (P,) the objective and the feature term's gradient (P, *input_shape)."""
        xg = x.detach().requires_grad_(True)
        _, (f,) = model.logits_and_features(xg, [layer])
        feat = (f - t_feat).pow(2).sum(dim=1)
        (grad,) = torch.autograd.grad(feat.sum(), xg)
        feat = feat.detach()
        return feat, feat + beta * (x - bases).flatten(1).pow(2).sum(dim=1), grad

    x = bases.clone()
    step = torch.full((x.shape[0],), float(lr), dtype=x.dtype)
    shape = (-1,) + (1,) * (x.dim() - 1)
    with model.attack_mode():
        feat, obj, grad = evaluate(x)
        active = torch.ones(x.shape[0], dtype=torch.bool)
        for _ in range(max_iter):
            if not bool(active.any()):
                break
            lam = step.view(shape)
            cand = ((x - lam * grad + lam * beta * bases) / (1 + lam * beta)).clamp(lo, hi)
            cand_feat, cand_obj, cand_grad = evaluate(cand)
            better = (cand_obj < obj) & active
            change = (cand - x).flatten(1).norm(dim=1) / cand.flatten(1).norm(dim=1).clamp_min(1e-12)
            keep = better.view(shape)
            x, grad = torch.where(keep, cand, x), torch.where(keep, cand_grad, grad)
            feat, obj = torch.where(better, cand_feat, feat), torch.where(better, cand_obj, obj)
            step = torch.where(better | ~active, step, step * decay)
            active &= ~(better & (change < tol)) & (step > lr * 1e-6)
    dist = feat.sqrt()
    return x.detach(), dist


def _last_linear(module: nn.Module) -> tuple[str, nn.Linear]:
    named = [(name, m) for name, m in module.named_modules() if isinstance(m, nn.Linear)]
    if not named:
        raise UsageError("the model has no nn.Linear layer to retrain as its head")
    name, lin = named[-1]
    assert isinstance(lin, nn.Linear)
    return name, lin


def train_linear_head(
    model: TorchClassifier, x: Tensor, y: Tensor, *, epochs: int = 30, lr: float = 1e-2, seed: int = 0
) -> TorchClassifier:
    """Shafahi's transfer-learning victim: ``model`` with its last ``nn.Linear`` replaced by a fresh one (seeded
    initialisation) trained on the frozen penultimate features of ``x`` (N, *input_shape), labels ``y`` (N,), with
    the one trainer (Adam, ``lr``, batches of 64, ``epochs`` passes). ``model`` is not changed."""
    name, old = _last_linear(model.module)
    feats = model.features(x, [name + ":input"])[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(old.in_features, old.out_features)
    from ...training import Trainer

    Trainer(head, epochs=epochs, batch_size=64, lr=lr, seed=seed).fit(feats, y)
    head.eval()
    for p in head.parameters():
        p.requires_grad_(False)
    module = copy.deepcopy(model.module)
    parent_name, _, attr = name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    setattr(parent, attr, head)
    return model.with_module(module)


def _int_at_least(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UsageError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


@register_poisoning("feature-collision")
@dataclass(kw_only=True, eq=False, repr=False)
class FeatureCollision(PoisoningAttack):
    """Poison Frogs (Shafahi et al. 2018): append base-class images that collide with a test input in feature space.

    Args (``seed``/``generator`` draw the base images; ``rate`` and ``target`` are not used):
        model: the feature model (a :class:`~bastion.models.features.HasFeatures` classifier, e.g. zoo mnist-cnn).
        target_index: the test input to misclassify (an index into the test split).
        base_class: the class it should get; default: the model's runner-up class for it.
        n_poisons: how many poisons to add (each from its own base image).
        layer: the feature layer; default ``model.penultimate_layer``.
        beta0: ``beta = beta0 * (D_f / D_in)^2`` weighs closeness to the base (Shafahi: 0.25).
        lr, max_iter, decay, tol: the splitting's first step size, most steps, step decay, stopping tolerance.
        watermark: the target's opacity blended into each base, in [0, 1) (0: none; Shafahi: 0.3 end-to-end).
    """

    clean_label = True

    model: HasFeatures | None = None
    target_index: int = 0
    base_class: int | None = None
    n_poisons: int = 5
    layer: str | None = None
    beta0: float = 0.25
    lr: float = 0.01
    max_iter: int = 1000
    decay: float = 0.5
    tol: float = 1e-7
    watermark: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.model is None or not isinstance(self.model, HasFeatures):
            raise UsageError("feature collision needs model= a classifier with features (e.g. a TorchClassifier)")
        if self.target is not None:
            raise UsageError("feature collision aims the target input at base_class=; target= is not used")
        self.target_index = _int_at_least("target_index", self.target_index, 0)
        self.n_poisons = _int_at_least("n_poisons", self.n_poisons, 1)
        self.max_iter = _int_at_least("max_iter", self.max_iter, 1)
        if self.base_class is not None:
            self.base_class = _int_at_least("base_class", self.base_class, 0)
        for name, low, high in (("beta0", 0.0, math.inf), ("lr", 0.0, math.inf), ("decay", 0.0, 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not low < v < high:
                raise UsageError(f"{name} must be a number in ({low:g}, {high:g}), got {v!r}")
        if isinstance(self.tol, bool) or not isinstance(self.tol, (int, float)) or not self.tol >= 0:
            raise UsageError(f"tol must be a number >= 0, got {self.tol!r}")
        w = self.watermark
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < 1:
            raise UsageError(f"watermark (the target's opacity) must lie in [0, 1), got {w!r}")

    def _check_data(self, data: Dataset) -> None:
        n_test = data.x_test.shape[0]
        if self.target_index >= n_test:
            raise UsageError(f"target_index {self.target_index} is past the test split's {n_test} inputs")
        true = int(data.y_test[self.target_index])
        if self.base_class is not None:
            if self.base_class >= data.n_classes:
                raise UsageError(
                    f"base_class must be a class index in [0, {data.n_classes - 1}], got {self.base_class}"
                )
            if self.base_class == true:
                raise UsageError(f"the target input is already of class {true}: choose another base_class")
        shape = tuple(getattr(self.model, "input_shape", ()) or ())
        if shape and shape != tuple(data.input_shape):
            raise UsageError(f"the feature model takes inputs {shape} but the data has {tuple(data.input_shape)}")

    def _base_class(self, data: Dataset, target: Tensor) -> int:
        if self.base_class is not None:
            return self.base_class
        with torch.no_grad(), self.model.attack_mode():  # type: ignore[union-attr]
            scores = self.model.logits(target)[0].clone()  # type: ignore[union-attr]
        scores[int(data.y_test[self.target_index])] = -math.inf
        return int(scores.argmax())

    def _poison(self, data: Dataset, generator: torch.Generator) -> PoisonedData:
        model = self.model
        assert model is not None  # checked in __post_init__
        target = data.x_test[self.target_index : self.target_index + 1]
        base = self._base_class(data, target)
        candidates = torch.nonzero(data.y_train == base).flatten()
        too_few = (
            f"n_poisons={self.n_poisons} needs as many base images of class {base}, the data has "
            f"{candidates.numel()}: lower n_poisons"
        )
        src = self._draw(candidates, self.n_poisons, generator, too_few=too_few)
        anchors = (1 - self.watermark) * data.x_train[src] + self.watermark * target
        layer = self.layer or model.penultimate_layer
        d_feat = model.features(target, [layer])[0].shape[1]
        beta = self.beta0 * (d_feat / target[0].numel()) ** 2
        poisons, dist = collide(
            model, target, anchors, layer=layer, beta=beta, lr=self.lr, max_iter=self.max_iter,
            decay=self.decay, tol=self.tol, bounds=data.bounds,
        )  # fmt: skip
        n = data.x_train.shape[0]
        labels = torch.full((self.n_poisons,), base, dtype=data.y_train.dtype)
        data.x_train = torch.cat([data.x_train, poisons.to(data.x_train.dtype)])
        data.y_train = torch.cat([data.y_train, labels])
        return PoisonedData(
            data=data,
            indices=torch.arange(n, n + self.n_poisons),
            original_labels=labels.clone(),
            poisoned_labels=labels.clone(),
            attack=self.name,
            params=self.params(),
            target=base,
            source_indices=src,
            extra={
                "target_indices": [self.target_index],
                "adversarial_labels": [base],
                "base_class": base,
                "beta": beta,
                "feature_distance": dist.tolist(),
                "distance_to_base": (poisons - data.x_train[src]).flatten(1).norm(dim=1).tolist(),
            },
        )
