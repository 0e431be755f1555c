"""White-box adapter for a ``torch.nn.Module``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn

from ..errors import UsageError
from .base import BaseClassifier, Output
from .features import HasFeatures

__all__ = ["TorchClassifier"]


class TorchClassifier(BaseClassifier, HasFeatures):
    """Wrap a ``torch.nn.Module`` as a white-box :class:`~bastion.models.Classifier`.

    The module maps (N, *input_shape) inputs in ``bounds`` to (N, n_classes) scores. Normalisation
    must live inside the module so that eps is measured in input space. Tuple/list outputs use
    their first element; dict outputs use the key ``logits`` (or ``output_key``). Whether the
    scores are probabilities is detected on the first call (rows non-negative and summing to 1)
    unless ``output`` is given.

    Args:
        module: the network. It is not modified, except that :meth:`attack_mode` puts it in eval
            mode and restores its previous training flags afterwards.
        bounds: valid input range.
        n_classes: number of classes.
        input_shape: shape of one input. ``None``: taken from the first batch the model is given (an
            attack's inputs, a detector's fit data), then fixed.
        output: 'logits' or 'probabilities'; ``None`` detects it.
        output_key: key to read from a dict output.

    Features capability (:class:`~bastion.models.features.HasFeatures`): ``features(x, layers)`` and
    ``logits_and_features(x, layers)`` read named layers of ``module`` (default: the penultimate features,
    the input of the last ``nn.Linear``); ``feature_layers()`` lists them.
    """

    white_box = True
    arch: str | None = None  # the registered architecture the module was built from, when known (zoo, safetensors)
    metadata: dict[str, str] | None = None  # a safetensors file's metadata (its training record), when loaded from one

    def __init__(
        self,
        module: nn.Module,
        *,
        bounds: tuple[float, float] = (0.0, 1.0),
        n_classes: int,
        input_shape: tuple[int, ...] | None = None,
        output: Output | None = None,
        output_key: str = "logits",
    ) -> None:
        if not isinstance(module, nn.Module):
            raise UsageError(f"TorchClassifier needs a torch.nn.Module, got {type(module).__name__}")
        super().__init__(
            n_classes=n_classes, input_shape=tuple(input_shape or ()), bounds=bounds, output=output or "logits"
        )
        self.module = module
        self.output_key = output_key
        self._output_known = output is not None
        self._input_shape_known = input_shape is not None

    def _unwrap(self, out: object) -> Tensor:
        if isinstance(out, Tensor):
            return out
        if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
            return out[0]
        if isinstance(out, Mapping):
            value = out.get(self.output_key)
            if isinstance(value, Tensor):
                return value
            raise UsageError(
                f"the model returned a dict without the key {self.output_key!r} (keys: {sorted(out)}): "
                "pass output_key= naming the scores"
            )
        raise UsageError(f"the model returned {type(out).__name__}; expected a tensor of shape (N, n_classes)")

    def with_module(self, module: nn.Module) -> TorchClassifier:
        """A classifier around ``module`` (a retrained copy of this one's network) with this one's bounds, classes,
        input shape, output kind, output key and architecture name."""
        clf = TorchClassifier(
            module,
            bounds=self.bounds,
            n_classes=self.n_classes,
            input_shape=tuple(self.input_shape) if self._input_shape_known else None,
            output=self.output if self._output_known else None,
            output_key=self.output_key,
        )
        clf.arch = self.arch
        return clf

    def learn_input_shape(self, shape: tuple[int, ...]) -> None:
        """Adopt ``shape`` as the input shape if none was given (the first batch decides)."""
        if not self._input_shape_known:
            self.input_shape = tuple(int(s) for s in shape)
            self._input_shape_known = True

    def _scores(self, x: Tensor) -> Tensor:
        self.learn_input_shape(tuple(x.shape[1:]))
        out = self._unwrap(self.module(x))
        if out.dim() != 2 or out.shape[1] != self.n_classes:
            raise UsageError(
                f"the model returned scores of shape {tuple(out.shape)}; expected (N, {self.n_classes}) — "
                "check n_classes and that the model outputs one row of class scores per input"
            )
        if not self._output_known and out.shape[0] > 0:
            with torch.no_grad():
                looks_prob = bool((out >= 0).all()) and bool(
                    torch.allclose(
                        out.sum(dim=1), torch.ones(out.shape[0], dtype=out.dtype, device=out.device), atol=1e-4
                    )
                )
            self.output = "probabilities" if looks_prob else "logits"
            self._output_known = True
        return out

    @contextlib.contextmanager
    def attack_mode(self) -> Iterator[None]:
        """Eval mode for the duration of an attack; every submodule's training flag restored after."""
        flags = [(m, m.training) for m in self.module.modules()]
        self.module.eval()
        try:
            yield
        finally:
            for m, flag in flags:
                m.training = flag

    def feature_module(self) -> nn.Module:
        """The wrapped network: its ``named_modules()`` name the feature layers."""
        return self.module

    @property
    def device(self) -> torch.device:
        for p in self.module.parameters():
            return p.device
        return torch.device("cpu")
