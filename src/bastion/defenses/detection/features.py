"""Intermediate features of a white-box torch model, read with forward hooks.

A layer is named by its path in ``module.named_modules()`` (``"7"``, ``"features.3"``, ...): ``"NAME"``
reads that submodule's *output*, ``"NAME:input"`` its (first) *input*. The hooks live only for the
duration of one forward pass (:func:`forward_with_features`), so the model is never modified and its
scores are those of ``model.logits`` (queries are counted as usual).

Each captured activation (N, C, *spatial) is reduced to (N, d): ``pool="avg"`` takes the mean over the
spatial dimensions (Lee et al. 2018 average-pool each feature map; (N, d) activations are kept as they
are), ``pool="flatten"`` keeps every value. The features stay on the autograd graph, so a detector built
on them is differentiable with respect to the input.

Shapes: inputs (N, *input_shape) -> logits (N, n_classes) and one (N, d_l) tensor per layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from torch import Tensor, nn

from ...errors import UsageError
from ...models.base import Classifier

__all__ = ["Pool", "forward_with_features", "last_linear_input", "module_of", "pool_features", "relu_outputs"]

Pool = Literal["avg", "flatten"]
_INPUT = ":input"


def module_of(model: Classifier) -> nn.Module:
    """The ``nn.Module`` inside a white-box torch adapter, or a UsageError saying what is needed."""
    module = getattr(model, "module", None)
    if not isinstance(module, nn.Module):
        raise UsageError(f"feature-based detectors read the activations of a torch model: wrap the network in "
                         f"bastion.models.TorchClassifier (got {type(model).__name__}, which has no .module)")
    return module


def last_linear_input(module: nn.Module) -> str:
    """The input of the last ``nn.Linear`` (the penultimate features): ``"NAME:input"``."""
    names = [name for name, m in module.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise UsageError("the model has no nn.Linear layer, so there is no default penultimate layer: "
                         "pass layers=['NAME'] or ['NAME:input'] naming a module of model.module")
    return names[-1] + _INPUT


def relu_outputs(module: nn.Module) -> list[str]:
    """The output of every ``nn.ReLU`` module, in registration order."""
    names = [name for name, m in module.named_modules() if isinstance(m, nn.ReLU)]
    if not names:
        raise UsageError("the model has no nn.ReLU module (activations applied functionally are invisible to "
                         "hooks): pass layers=[...] naming modules of model.module")
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
            raise UsageError(f"the model has no submodule named {name!r}: choose among {choices} "
                             "(append ':input' to read a module's input)")
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


def forward_with_features(model: Classifier, x: Tensor, layers: Sequence[str], *,
                          pool: Pool = "avg") -> tuple[Tensor, list[Tensor]]:
    """``model.logits(x)`` and the pooled activations of ``layers`` from the same forward pass."""
    module = module_of(model)
    specs = _resolve(module, layers)
    captured: list[list[Tensor]] = [[] for _ in specs]
    handles = []

    def make_hook(i: int, is_input: bool):
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
        logits = model.logits(x)
    finally:
        for h in handles:
            h.remove()
    feats = []
    for (spec, _, _), got in zip(specs, captured, strict=True):
        if len(got) != 1:
            raise UsageError(f"layer {spec!r} ran {len(got)} times in one forward pass; name a module that runs "
                             "exactly once (a shared nn.ReLU object is called once per use: give each use its own)")
        feats.append(got[0])
    return logits, feats
