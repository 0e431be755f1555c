"""Shared by the query-based attack tests: a real model whose backward pass raises, so an attack
that asked for a gradient would fail loudly."""

from __future__ import annotations

import torch
from torch import nn

from bastion.models.torch import TorchClassifier


class NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        return x.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        raise RuntimeError("a query-based attack asked for a gradient")


class GradientFree(nn.Module):
    """The network behind a pass-through whose backward raises."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(NoBackward.apply(x))


class BlackBoxTorch(TorchClassifier):
    white_box = False
