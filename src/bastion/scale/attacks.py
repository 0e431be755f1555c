"""An evasion attack over shards of its inputs: the same :class:`~bastion.attacks.base.AttackResult` as one call,
from any number of workers.

:func:`shard_attack` cuts the inputs into runs of ``shard_size``; shard k is attacked by a copy of the attack
seeded with :func:`~.executor.shard_seed` ``(attack.seed, k)`` (shard 0 keeps the attack's own seed), on exactly
the inputs of that shard, so a shard's result depends on nothing but the shard: one process or many, the merged
result is the same tensor for tensor. Per-input attacks batch inputs independently (a forward pass of a batch is
each input's forward pass), so with ``shard_size`` >= the inputs the result is what ``attack(model, x, y)``
returns.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..attacks.base import Attack, AttackResult
from ..errors import UsageError
from ..models.base import Classifier, validate_inputs
from ..threat import ThreatModel
from .executor import SHARD_SIZE, Executor, SerialExecutor, ShardStore, shard_ranges, shard_seed

__all__ = ["merge_results", "shard_attack"]

_TENSORS = ("x_adv", "success", "y", "pred_adv", "clean_correct", "norms")


def _to_plain(r: AttackResult) -> dict[str, Any]:
    """An attack result as plain values (for a :class:`~.executor.ShardStore` and the trip between processes)."""
    out: dict[str, Any] = {k: getattr(r, k) for k in _TENSORS}
    out.update(
        queries=int(r.queries),
        gradients=int(r.gradients),
        seconds=float(r.seconds),
        threat=[r.threat.norm, r.threat.eps, list(r.threat.bounds)],
        targets=r.targets,
        extra=r.extra,
    )
    return out


def _from_plain(d: dict[str, Any]) -> AttackResult:
    norm, eps, bounds = d["threat"]
    fields = {k: d[k] for k in _TENSORS}
    return AttackResult(
        **fields,
        queries=d["queries"],
        gradients=d["gradients"],
        seconds=d["seconds"],
        threat=ThreatModel(norm, eps, (bounds[0], bounds[1])),
        targets=d["targets"],
        extra=d["extra"],
    )


def _merge_extra(values: list[Any], sizes: list[int]) -> Any:
    """One ``extra`` entry over shards: per-input tensors joined, counts summed, rates averaged weighted by the
    shard's inputs, lists element by element, anything else the first shard's."""
    first = values[0]
    if isinstance(first, Tensor):
        return torch.cat(values) if first.dim() > 0 else first
    if isinstance(first, bool) or isinstance(first, str) or first is None:
        return first
    if isinstance(first, int):
        return sum(values)
    if isinstance(first, float):
        total = sum(sizes)
        return sum(v * s for v, s in zip(values, sizes)) / total if total else first
    if isinstance(first, (list, tuple)) and all(isinstance(v, type(first)) and len(v) == len(first) for v in values):
        merged = [_merge_extra([v[j] for v in values], sizes) for j in range(len(first))]
        return type(first)(merged) if isinstance(first, tuple) else merged
    if isinstance(first, dict):
        return {k: _merge_extra([v[k] for v in values], sizes) for k in first if all(k in v for v in values)}
    return first


def merge_results(parts: list[AttackResult], *, seconds: float | None = None) -> AttackResult:
    """The shards' results as one: tensors joined in input order, queries and gradients summed, ``seconds`` the
    given wall time (else the shards' sum); ``extra`` merged by :func:`_merge_extra`."""
    if not parts:
        raise ValueError("no shard results to merge")
    sizes = [int(p.y.shape[0]) for p in parts]
    keys = [k for k in parts[0].extra if all(k in p.extra for p in parts)]
    targets = parts[0].targets
    return AttackResult(
        **{k: torch.cat([getattr(p, k) for p in parts]) for k in _TENSORS},
        queries=sum(p.queries for p in parts),
        gradients=sum(p.gradients for p in parts),
        seconds=float(seconds if seconds is not None else sum(p.seconds for p in parts)),
        threat=parts[0].threat,
        targets=None if targets is None else torch.cat([p.targets for p in parts if p.targets is not None]),
        extra={k: _merge_extra([p.extra[k] for p in parts], sizes) for k in keys},
    )


def _digest(x: Tensor, y: Tensor) -> str:
    h = hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes())
    h.update(y.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _attack_shard(shared: tuple[Any, ...], item: tuple[int, int, int]) -> dict[str, Any]:
    model, attack, x, y, targets = shared
    try:
        model = copy.deepcopy(model)  # every shard starts from the model as given (a random model's state included)
    except TypeError:  # a model holding something that cannot be copied (a connection): shards share it
        pass
    k, a, b = item
    shard_attack_ = dataclasses.replace(attack, seed=shard_seed(attack.seed, k), generator=None)
    t = None if targets is None else targets[a:b]
    return _to_plain(shard_attack_(model, x[a:b], y[a:b], t))


def shard_attack(
    attack: Attack,
    model: Classifier,
    x: Tensor,
    y: Tensor,
    targets: Tensor | None = None,
    *,
    executor: Executor | None = None,
    shard_size: int = SHARD_SIZE,
    store: ShardStore | None = None,
    label: str = "",
    progress: Callable[[int, int], None] | None = None,
) -> AttackResult:
    """``attack(model, x, y, targets)`` shard by shard on ``executor`` (default: this process), merged.

    Shard k uses the attack with seed :func:`~.executor.shard_seed` ``(attack.seed, k)``; an attack given a
    ``generator`` (shared state) cannot be sharded reproducibly and is refused. With ``store``, finished shards
    are saved under keys made of ``label``, the attack's repr and the shard's range, and read back next time.
    Every shard attacks a copy of the model as it was given (so a randomised model's state does not carry from
    one shard to the next, here or on a worker); the model's own ``n_queries`` is advanced by the shards' queries.
    """
    if attack.generator is not None:
        raise UsageError(
            f"{type(attack).__name__} was given a generator: a sharded attack draws from per-shard generators "
            "derived from its seed; pass seed= instead"
        )
    validate_inputs(model, x, y)
    if targets is not None:
        validate_inputs(model, x, targets)
    executor = executor if executor is not None else SerialExecutor()
    ranges = shard_ranges(int(x.shape[0]), shard_size)
    items = [(k, a, b) for k, (a, b) in enumerate(ranges)]
    keys = [f"{label}|{attack!r}|{a}:{b}|{_digest(x[a:b], y[a:b])}" for _, a, b in items] if store is not None else None
    x, y = x.detach(), y.to(x.device)
    if not items:  # no inputs: one empty call, as the attack itself would
        return attack(model, x, y, targets)
    parts = executor.map(
        _attack_shard,
        items,
        shared=(model, attack, x, y, targets),
        label=label or attack.name,
        store=store,
        keys=keys,
        progress=progress,
    )
    merged = merge_results([_from_plain(p) for p in parts], seconds=executor.records[-1].wall)
    model.n_queries += merged.queries  # type: ignore[misc]  # the shards ran on copies
    return merged
