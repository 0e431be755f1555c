"""The copy an extraction attack trains: its architecture (:data:`CopyArch`: a registered name, a factory or the
default MLP), its seeded initialisation (:func:`build_copy`, :class:`VictimCopy`) and the frozen white-box classifier
it becomes (:func:`copy_classifier`), with the victim's input shape, classes and bounds."""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy

import torch
from torch import nn

from ...errors import UsageError
from ...models.base import Classifier
from ...models.torch import TorchClassifier

__all__ = ["CopyArch", "VictimCopy", "build_copy", "check_copy_arch", "copy_classifier", "default_copy_arch"]


CopyArch = str | Callable[[], nn.Module] | None
"""A copy's architecture: a registered name, a factory returning a fresh ``nn.Module``, or ``None`` (a two-hidden-
layer MLP for any input shape, :func:`~bastion.attacks.evasion.transfer.surrogate_mlp`)."""


def check_copy_arch(copy: object) -> None:
    """Raise :class:`UsageError` unless ``copy`` is a :data:`CopyArch` (a registered name is checked to exist)."""
    if isinstance(copy, str):
        from ...models.architectures import ARCHITECTURES

        ARCHITECTURES.get(copy)
    elif copy is not None and not callable(copy):
        raise UsageError(f"copy must be an architecture name, a module factory or None, got {type(copy).__name__}")


def default_copy_arch(victim: Classifier, dataset: str | None = None, *, own: bool = True) -> str | None:
    """The copy architecture an attacker takes when told none: the victim's own registered architecture (``own``: a
    torch model's ``arch``, under any wrappers), else the zoo's network for the built-in ``dataset``
    (:func:`~bastion.models.zoo.recipe_arch`) — the first that takes the victim's input shape and classes; ``None``
    when neither does (:func:`build_copy` then builds an MLP)."""
    from ...models.architectures import ARCHITECTURES
    from ...models.wrapped import unwrap
    from ...models.zoo import recipe_arch

    inner = unwrap(victim)
    candidates = [inner.arch if own and isinstance(inner, TorchClassifier) else None]
    candidates.append(recipe_arch(dataset) if dataset is not None else None)
    for name in candidates:
        if name is not None and name in ARCHITECTURES:
            arch = ARCHITECTURES.get(name)
            if arch.input_shape == tuple(victim.input_shape) and arch.n_classes == victim.n_classes:
                return name
    return None


def build_copy(copy: CopyArch, victim: Classifier, seed: int) -> tuple[nn.Module, str | None]:
    """A freshly initialised copy module (initialised under ``fork_rng`` with ``seed``: the global RNG is left
    alone) and its registered architecture name, if it has one; its input shape and classes must be the victim's."""
    from ...models.architectures import build_architecture
    from ..evasion.transfer import surrogate_mlp

    shape, k = tuple(victim.input_shape), victim.n_classes
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if copy is None:
            return surrogate_mlp(shape, k, victim.bounds), None
        if not isinstance(copy, str):
            module = copy()
            if not isinstance(module, nn.Module):
                raise UsageError(f"the copy factory returned {type(module).__name__}, not a torch.nn.Module")
            return module, None
        module, arch = build_architecture(copy)
    if arch.input_shape != shape or arch.n_classes != k:
        raise UsageError(
            f"the copy architecture {copy!r} takes {arch.input_shape} -> {arch.n_classes} classes but the victim "
            f"{shape} -> {k}: choose an architecture for the victim's inputs"
        )
    return module, arch.name


def copy_classifier(module: nn.Module, victim: Classifier, arch: str | None) -> TorchClassifier:
    """``module`` frozen in eval mode as a white-box classifier with the victim's bounds, classes and input shape."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    clf = TorchClassifier(
        module, bounds=victim.bounds, n_classes=victim.n_classes, input_shape=tuple(victim.input_shape)
    )
    clf.arch = arch
    return clf


class VictimCopy:
    """The copy of the victim an attack trains: its module, freshly initialised by :func:`build_copy` from
    ``init_seed``, and its registered architecture name. :meth:`reset` rebuilds it from the same initialisation,
    :meth:`snapshot` freezes a deep copy as a classifier (the module trains on), :meth:`freeze` the module itself."""

    module: nn.Module
    arch: str | None

    def __init__(self, copy: CopyArch, victim: Classifier, init_seed: int) -> None:
        self.copy, self.victim, self.init_seed = copy, victim, init_seed
        self.reset()

    def reset(self) -> None:
        """A fresh module from the copy's initialisation (the global RNG is left alone)."""
        self.module, self.arch = build_copy(self.copy, self.victim, self.init_seed)

    def snapshot(self) -> TorchClassifier:
        """A frozen deep copy of the module as a white-box classifier (:func:`copy_classifier`)."""
        return copy_classifier(deepcopy(self.module), self.victim, self.arch)

    def freeze(self) -> TorchClassifier:
        """The module itself, frozen, as a white-box classifier (:func:`copy_classifier`)."""
        return copy_classifier(self.module, self.victim, self.arch)
