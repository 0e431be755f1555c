"""The features capability: intermediate activations of a white-box torch classifier.

A classifier *declares* that it can show its internal features by deriving from :class:`HasFeatures`
(as :class:`~bastion.models.TorchClassifier` does; another class may call ``HasFeatures.register``).
Detectors, the guard service and the training-set sanitisers ask ``isinstance(model, HasFeatures)``,
never ``hasattr``.

A layer is named by its path in ``module.named_modules()`` (``"7"``, ``"features.3"``, ...): ``"NAME"``
reads that submodule's *output*, ``"NAME:input"`` its (first) *input*. The hooks live only for the
duration of one forward pass (:func:`forward_with_features`), so the model is never modified and its
scores are those of ``model.logits`` (queries are counted as usual).

Each captured activation (N, C, *spatial) is reduced to (N, d): ``pool="avg"`` takes the mean over the
spatial dimensions (Lee et al. 2018 average-pool each feature map; (N, d) activations are kept as they
are), ``pool="flatten"`` keeps every value. In :meth:`HasFeatures.logits_and_features` the features stay
on the autograd graph, so a detector built on them is differentiable with respect to the input;
:meth:`HasFeatures.features` is batched and computes no gradients unless asked to.

Shapes: inputs (N, *input_shape) -> logits (N, n_classes) and one (N, d_l) tensor per layer.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..errors import UsageError

__all__ = [
    "HasFeatures",
    "LayerKind",
    "Pool",
    "forward_with_features",
    "last_linear_input",
    "pool_features",
    "relu_outputs",
]

Pool = Literal["avg", "flatten"]
LayerKind = Literal["all", "relu", "linear"]
_INPUT = ":input"


def last_linear_input(module: nn.Module) -> str:
    """The input of the last ``nn.Linear`` (the penultimate features): ``"NAME:input"``."""
    names: list[str] = [name for name, m in module.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise UsageError(
            "the model has no nn.Linear layer, so there is no default penultimate layer: "
            "pass layers=['NAME'] or ['NAME:input'] naming a module of model.module"
        )
    return names[-1] + _INPUT


def relu_outputs(module: nn.Module) -> list[str]:
    """The output of every ``nn.ReLU`` module — or, in an HE-friendly network, of every polynomial activation
    (:class:`~bastion.models.he.PolyAct`, which stands where the ReLUs were) — in registration order."""
    from .he import PolyAct

    names = [name for name, m in module.named_modules() if isinstance(m, (nn.ReLU, PolyAct))]
    if not names:
        raise UsageError(
            "the model has no nn.ReLU module (activations applied functionally are invisible to "
            "hooks): pass layers=[...] naming modules of model.module"
        )
    return names


def _resolve(module: nn.Module, layers: Sequence[str]) -> list[tuple[str, bool, nn.Module]]:
    table = dict(module.named_modules())
    out = []
    for spec in layers:
        if not isinstance(spec, str):
            raise UsageError(f"layers must be module names (str), got {spec!r}")
        is_input = spec.endswith(_INPUT)
        name = spec[: -len(_INPUT)] if is_input else spec
        if name not in table:
            choices = ", ".join(repr(n) for n in table if n) or "none"
            raise UsageError(
                f"the model has no submodule named {name!r}: choose among {choices} "
                "(append ':input' to read a module's input)"
            )
        out.append((spec, is_input, table[name]))
    return out


def pool_features(t: Tensor, pool: Pool) -> Tensor:
    """Reduce an activation (N, C, *spatial) or (N, d) to (N, d)."""
    if t.dim() < 2:
        raise UsageError(f"a hooked activation has shape {tuple(t.shape)}; expected (N, d) or (N, C, ...)")
    if t.dim() == 2:
        return t
    if pool == "avg":
        return t.flatten(2).mean(dim=2)
    return t.flatten(1).clone()  # a copy: a later in-place op must not change the captured values


def forward_with_features(
    module: nn.Module, forward: Callable[[Tensor], Tensor], x: Tensor, layers: Sequence[str], *, pool: Pool = "avg"
) -> tuple[Tensor, list[Tensor]]:
    """``forward(x)`` and the pooled activations of ``layers`` of ``module`` from the same pass.

    ``forward`` runs ``module`` (a classifier's counting ``logits``); each named layer must run exactly
    once in it.
    """
    if pool not in ("avg", "flatten"):
        raise UsageError(f"pool must be 'avg' or 'flatten', got {pool!r}")
    specs = _resolve(module, layers)
    captured: list[list[Tensor]] = [[] for _ in specs]
    handles = []

    def make_hook(i: int, is_input: bool) -> Callable[..., None]:
        def hook(mod: nn.Module, args: Any, output: Any = None) -> None:
            value = (args[0] if isinstance(args, tuple) else args) if is_input else output
            if isinstance(value, (tuple, list)):
                value = value[0]
            captured[i].append(pool_features(value, pool))

        return hook

    try:
        for i, (_, is_input, sub) in enumerate(specs):
            if is_input:
                handles.append(sub.register_forward_pre_hook(make_hook(i, True)))
            else:
                handles.append(sub.register_forward_hook(make_hook(i, False)))
        logits = forward(x)
    finally:
        for h in handles:
            h.remove()
    feats = []
    for (spec, _, _), got in zip(specs, captured, strict=True):
        if len(got) != 1:
            raise UsageError(
                f"layer {spec!r} ran {len(got)} times in one forward pass; name a module that runs "
                "exactly once (a shared nn.ReLU object is called once per use: give each use its own)"
            )
        feats.append(got[0])
    return logits, feats


class HasFeatures(abc.ABC):
    """The declared capability of a classifier to show its intermediate activations.

    Implementers provide :meth:`feature_module` (the ``nn.Module`` whose named submodules are the layers)
    and :meth:`logits` (the counting forward pass, from :class:`~bastion.models.base.BaseClassifier`);
    the rest is written here once.
    """

    @abc.abstractmethod
    def feature_module(self) -> nn.Module:
        """The network whose ``named_modules()`` name the layers."""

    @abc.abstractmethod
    def logits(self, x: Tensor) -> Tensor:
        """The classifier's scores (counts queries)."""

    def attack_mode(self) -> Any:  # pragma: no cover - provided by the classifier
        raise NotImplementedError

    def feature_layers(self, kind: LayerKind = "all") -> list[str]:
        """Layer names: every named submodule (``"all"``), the outputs of its ``nn.ReLU`` modules
        (``"relu"``), or the inputs of its ``nn.Linear`` modules (``"linear"``), in registration order."""
        module = self.feature_module()
        if kind == "relu":
            return relu_outputs(module)
        if kind == "linear":
            return [name + _INPUT for name, m in module.named_modules() if isinstance(m, nn.Linear)]
        if kind != "all":
            raise UsageError(f"kind must be 'all', 'relu' or 'linear', got {kind!r}")
        return [name for name, _ in module.named_modules() if name]

    @property
    def penultimate_layer(self) -> str:
        """The penultimate features: the input of the last ``nn.Linear`` (``"NAME:input"``)."""
        return last_linear_input(self.feature_module())

    def logits_and_features(
        self, x: Tensor, layers: Sequence[str] | None = None, *, pool: Pool = "avg"
    ) -> tuple[Tensor, list[Tensor]]:
        """Scores (N, n_classes) and the pooled activations [(N, d_l)] of ``layers`` (default: the penultimate
        layer) from one forward pass of one batch, on the autograd graph when gradients are enabled."""
        names = [self.penultimate_layer] if layers is None else list(layers)
        return forward_with_features(self.feature_module(), self.logits, x, names, pool=pool)

    def features(
        self,
        x: Tensor,
        layers: Sequence[str] | None = None,
        *,
        pool: Pool = "avg",
        batch_size: int = 500,
        grad: bool = False,
    ) -> list[Tensor]:
        """The pooled activations [(N, d_l)] of ``layers`` (default: the penultimate layer), batched, in attack
        (eval) mode; no gradients unless ``grad=True``."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UsageError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if x.shape[0] == 0:
            raise UsageError("features of no inputs: pass at least one input")
        names = [self.penultimate_layer] if layers is None else list(layers)
        chunks: list[list[Tensor]] = [[] for _ in names]
        with self.attack_mode(), torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            for i in range(0, x.shape[0], batch_size):
                _, feats = self.logits_and_features(x[i : i + batch_size], names, pool=pool)
                for store, f in zip(chunks, feats, strict=True):
                    store.append(f)
        return [torch.cat(c) for c in chunks]
