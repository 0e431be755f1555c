"""Randomized-smoothing certification over shards of inputs: Cohen's CERTIFY on each input is independent of
every other, so it splits over workers with no shared state.

Each input draws its noise from a generator of its own, seeded from the smoothed classifier's seed and the input's
key (its index in the certified set plus ``offset``; :meth:`SmoothedClassifier.certify` with ``keys``), so the
certificates are the same on one process or many, whatever the shard size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..defenses.certification.smoothing import SmoothedClassifier
from ..errors import UsageError
from ..models.base import validate_inputs
from .executor import Executor, SerialExecutor, ShardStore, shard_ranges

__all__ = ["CERTIFY_SHARD", "certify_sharded"]

CERTIFY_SHARD = 4
"""Inputs per certification task: at Cohen's n = 100,000 one input is seconds of work, so small shards keep every
worker busy to the end."""


def _certify_shard(shared: tuple[Any, ...], item: tuple[int, int]) -> dict[str, Tensor]:
    model, x, n0, n, alpha, offset = shared
    a, b = item
    keys = torch.arange(offset + a, offset + b)
    labels, radii, counts = model.certify(x[a:b], n0=n0, n=n, alpha=alpha, return_counts=True, keys=keys)
    return {"labels": labels, "radii": radii, "counts": counts}


def certify_sharded(
    model: SmoothedClassifier,
    x: Tensor,
    *,
    n0: int | None = None,
    n: int | None = None,
    alpha: float | None = None,
    offset: int = 0,
    executor: Executor | None = None,
    shard_size: int = CERTIFY_SHARD,
    store: ShardStore | None = None,
    label: str = "certify",
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """CERTIFY on every input of ``x``, ``shard_size`` inputs per task on ``executor`` (default: this process):
    (labels, radii, counts) as :meth:`SmoothedClassifier.certify` returns with ``return_counts=True`` and
    ``keys = offset + arange(N)``. ``n0``, ``n``, ``alpha``: the model's unless given."""
    if not isinstance(model, SmoothedClassifier):
        raise UsageError(f"certification needs a SmoothedClassifier, got {type(model).__name__}")
    n0, n, alpha = model._budget(n0, n, alpha)
    validate_inputs(model, x)
    executor = executor if executor is not None else SerialExecutor()
    items = shard_ranges(int(x.shape[0]), shard_size)
    keys = [f"{label}|{model!r}|{n0}|{n}|{alpha!r}|{offset + a}:{offset + b}" for a, b in items] if store else None
    parts = executor.map(
        _certify_shard,
        items,
        shared=(model, x.detach(), n0, n, alpha, int(offset)),
        label=label,
        store=store,
        keys=keys,
        progress=progress,
    )
    if not parts:
        empty = torch.zeros(0, dtype=torch.long, device=x.device)
        return empty, torch.zeros(0, dtype=torch.float64, device=x.device), empty.clone()
    if executor.remote:
        model.n_queries += int(x.shape[0]) * (n0 + n)  # the shards ran on copies
    return tuple(torch.cat([p[k] for p in parts]) for k in ("labels", "radii", "counts"))  # type: ignore[return-value]
