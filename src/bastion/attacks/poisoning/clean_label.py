"""Clean-label backdoor: Turner, Tsipras & Madry 2019, "Label-Consistent Backdoor Attacks".

Threat model: the attacker may change the *inputs* of some training records of the ``target`` class but never a
label, so every poisoned record still looks correctly labelled to a human auditor. Stamping a trigger on target
images is weak on its own: the model classifies them by their content and has no reason to learn the trigger.
Turner et al. first make each poisoned image *hard to learn* from its content, so the model leans on the trigger
to fit its (correct) label; at test time the trigger on any input then pulls it to ``target``.

The perturbations (``perturbation=``):

- ``pgd`` (Turner Sec. 4.2): an untargeted L-inf PGD perturbation of radius ``eps`` (``steps`` steps, no early
  stop) on a *surrogate* model trained on the clean data, pushing each image away from its true class. The
  surrogate is ``surrogate=`` (any white-box Classifier; Turner use an adversarially trained one, whose
  perturbations look like the other classes) or, by default, ``surrogate_arch`` (default: the dataset's zoo
  architecture, e.g. ``mnist-cnn`` for ``mnist5k``) trained on the clean training split with the zoo's recipe.
  Uses bastion's :class:`~bastion.attacks.PGD`.
- ``interpolation`` (Turner Sec. 4.1 without the GAN): Turner interpolate in a GAN's latent space between the
  target image and one of another class, ``G((1 - tau) z_target + tau z_other)``; without a generative model we
  interpolate in input space, ``(1 - tau) x + tau x_other``, with ``x_other`` a uniformly drawn training image of
  another class: a faint image of another class over each poisoned record. A weaker, model-free variant.
- ``none``: the trigger on unmodified target images — the baseline the paper compares against.

The trigger (Turner Sec. 4.4): a ``size`` x ``size`` checkerboard; with ``corners=4`` (default) it is stamped at
all four corners, which Turner found makes it more visible to the model (and robust to flips and crops). The
same trigger is used at test time. ``trigger=`` / ``trigger_image=`` replace it.

``rate`` is the share of the *whole* training split that is poisoned (all of it from the target class, so at
most the target class's share). Labels never change: ``original_labels == poisoned_labels == target``.

Shapes: images (C, H, W) (or feature vectors for ``none``/``interpolation`` with a given trigger); PGD needs a
surrogate taking the data's input shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ...data.dataset import Dataset
from ...errors import UsageError
from ...models.architectures import ARCHITECTURES
from ...models.base import Classifier
from .backdoor import BackdoorAttack
from .base import PoisonedData, register_poisoning
from .triggers import Trigger

__all__ = ["PERTURBATIONS", "CleanLabel", "corner_trigger", "train_surrogate"]

PERTURBATIONS = ("pgd", "interpolation", "none")
_FOUR = ("top-left", "top-right", "bottom-left", "bottom-right")


def corner_trigger(
    input_shape: tuple[int, ...],
    *,
    size: int = 3,
    pattern: str = "checkerboard",
    corners: int = 4,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> Trigger:
    """A patch trigger at the bottom-right corner (``corners=1``) or at all four corners (``corners=4``, Turner
    et al. Sec. 4.4) of images (C, H, W)."""
    if corners not in (1, 4):
        raise UsageError(f"corners must be 1 (bottom-right) or 4 (every corner), got {corners!r}")
    if len(input_shape) != 3:
        raise UsageError(f"a corner trigger needs images (C, H, W), got inputs {tuple(input_shape)}")
    places = _FOUR if corners == 4 else ("bottom-right",)
    patches = [Trigger.patch(input_shape, size=size, location=p, pattern=pattern, bounds=bounds) for p in places]
    mask = torch.stack([t.mask for t in patches]).amax(dim=0)
    pat = patches[0].pattern.clone()
    for t in patches[1:]:
        pat = torch.where(t.mask > 0, t.pattern, pat)
    where = "every corner" if corners == 4 else "bottom-right"
    return Trigger(pat, mask, bounds=bounds, name=f"{size}x{size} {pattern} patch at {where}")


def train_surrogate(arch: str, data: Dataset) -> Classifier:
    """``arch`` trained on ``data``'s (clean) training split with the zoo's recipe, frozen, as a classifier."""
    from ...models.torch import TorchClassifier
    from ...models.training import train_architecture

    module, _ = train_architecture(arch, data)
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    a = ARCHITECTURES.get(arch)
    clf = TorchClassifier(module, bounds=a.bounds, n_classes=a.n_classes, input_shape=a.input_shape, output="logits")
    clf.arch = arch
    return clf


def _natural_arch(data: Dataset) -> str:
    from ...models.zoo import recipe_arch

    arch = recipe_arch(data.name)
    if arch is not None:
        return arch
    raise UsageError(
        f"no built-in architecture is known for the dataset {data.name!r}: pass surrogate_arch='NAME' (a registered "
        "architecture) or surrogate= (a trained white-box classifier) for the PGD perturbation"
    )


def _number(name: str, value: Any, *, low: float, high: float | None = None) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value > low
    if not ok or (high is not None and value > high):
        span = f"({low:g}, {high:g}]" if high is not None else f"> {low:g}"
        raise UsageError(f"{name} must be a number {span}, got {value!r}")
    return float(value)


@register_poisoning("clean-label")
@dataclass(kw_only=True, eq=False, repr=False)
class CleanLabel(BackdoorAttack):
    """Label-consistent backdoor (Turner et al. 2019): perturb target-class images, stamp the trigger, keep labels.

    Args (besides ``rate``, ``target``, ``trigger``, ``trigger_image``, ``seed``, ``generator``):
        perturbation: ``pgd`` (default), ``interpolation`` or ``none`` (see the module docstring).
        eps: ``pgd`` — the L-inf radius in input units (default 0.3: MNIST's usual budget; Turner use
            8-32/255 on CIFAR-10). steps: PGD steps (step size 2.5 * eps / steps).
        tau: ``interpolation`` — the weight of the other-class image, in (0, 1) (Turner's GAN: up to 0.3).
        surrogate: a white-box classifier for PGD; else ``surrogate_arch`` (default: the data's zoo
            architecture) is trained on the clean data.
        size, pattern, corners: the default trigger — a ``size`` x ``size`` ``pattern`` patch at 1 or 4 corners.
    """

    clean_label = True

    perturbation: str = "pgd"
    eps: float = 0.3
    steps: int = 40
    tau: float = 0.3
    surrogate_arch: str | None = None
    surrogate: Classifier | None = None
    size: int = 3
    pattern: str = "checkerboard"
    corners: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.all_to_all:
            raise UsageError("a clean-label backdoor is all-to-one (labels never change): drop all_to_all")
        if self.perturbation not in PERTURBATIONS:
            raise UsageError(f"perturbation must be one of {', '.join(PERTURBATIONS)}, got {self.perturbation!r}")
        self.eps = _number("eps", self.eps, low=0.0)
        self.tau = _number("tau", self.tau, low=0.0, high=1.0)
        if self.tau >= 1:
            raise UsageError("tau must be below 1 (tau = 1 would replace the image by one of another class)")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise UsageError(f"steps must be an integer >= 1, got {self.steps!r}")
        if self.corners not in (1, 4):
            raise UsageError(f"corners must be 1 (bottom-right) or 4 (every corner), got {self.corners!r}")
        if self.surrogate is not None and not isinstance(self.surrogate, Classifier):
            raise UsageError(f"surrogate must be a bastion Classifier, got {type(self.surrogate).__name__}")
        if self.surrogate is not None and self.surrogate_arch is not None:
            raise UsageError("give a surrogate or a surrogate_arch to train, not both")
        if self.surrogate_arch is not None:
            ARCHITECTURES.get(self.surrogate_arch)  # an unknown name fails here, listing the registered ones

    def _default_trigger(self, data: Dataset) -> Trigger:
        return corner_trigger(
            data.input_shape, size=self.size, pattern=self.pattern, corners=self.corners, bounds=data.bounds
        )

    def _check_data(self, data: Dataset) -> None:
        if self.surrogate is not None and self.perturbation == "pgd":
            shape = tuple(self.surrogate.input_shape)
            if shape and shape != tuple(data.input_shape):
                raise UsageError(f"the surrogate takes inputs {shape} but the data has {tuple(data.input_shape)}")

    def _perturb(self, data: Dataset, pick: Tensor, generator: torch.Generator) -> tuple[Tensor, dict[str, Any]]:
        """The hard-to-learn versions of the records ``pick`` (before the trigger) and what to record."""
        x = data.x_train[pick]
        if self.perturbation == "none":
            return x.clone(), {}
        if self.perturbation == "interpolation":
            others = torch.nonzero(data.y_train != self.target).flatten()
            other = others[torch.randint(0, others.numel(), (pick.numel(),), generator=generator)]
            mixed = (1 - self.tau) * x + self.tau * data.x_train[other]
            return mixed.clamp(*data.bounds), {"interpolated_with": other.tolist()}
        from ..evasion.pgd import PGD

        arch = None if self.surrogate is not None else (self.surrogate_arch or _natural_arch(data))
        model = self.surrogate if self.surrogate is not None else train_surrogate(str(arch), data)
        pgd = PGD(eps=self.eps, norm="linf", steps=self.steps, early_stop=False, generator=generator)
        result = pgd(model, x, data.y_train[pick])
        return result.x_adv.detach().clamp(*data.bounds), {
            "surrogate": arch or repr(model),
            "surrogate_fooled": float(result.success.double().mean()),
        }

    def _poison(self, data: Dataset, generator: torch.Generator) -> PoisonedData:
        trig = self.build_trigger(data)
        y = data.y_train
        n = y.shape[0]
        candidates = torch.nonzero(y == self.target).flatten()
        k = self._count(n)
        too_few = (
            f"a clean-label rate of {self.rate:g} needs {k} records of the target class {self.target}, the data "
            f"has {candidates.numel()} of {n}: lower the rate to at most {candidates.numel() / n:.3f}"
        )
        pick = self._draw(candidates, k, generator, too_few=too_few)
        hard, extra = self._perturb(data, pick, generator)
        data.x_train[pick] = trig.apply(hard, generator)
        labels = y[pick].clone()
        return self._changed_in_place(
            data,
            pick,
            labels,
            labels,
            target=int(self.target),
            trigger=trig,
            extra={"perturbation": self.perturbation, **extra},
        )
